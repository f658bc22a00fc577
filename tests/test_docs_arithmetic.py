"""Figures the docs derive rather than measure follow from what they are derived from: the memory
estimates of docs/training.md from the presets, and the means and gains of the held-out tables
in the README and docs/nano.md from the per-task rates next to them (every 150-item rate is a
whole number of items, so a mean or a gain can be checked to the digits it is written with)."""

import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = 20 / 150  # the shipped base's held-out solve rate: 20 of the 150 items (0.133)


def training_md() -> str:
    return " ".join((ROOT / "docs" / "training.md").read_text(encoding="utf-8").split())


def kv_cache_gb(preset: str, rows: float) -> float:
    """The dense bf16 KV cache of `rows` rows of a 1024-token prompt bucket + the 8192-slot
    response bucket, as docs/training.md computes it."""
    from azr_jax.models import get_preset

    c = get_preset(preset)
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * 2 * (1024 + 8192) * rows / 1e9


def tensor_degree(preset: str) -> int:
    from azr_jax.config import load_config

    return int(load_config(str(ROOT / "configs" / f"{preset}.py")).mesh.shape["tensor"])


def train_state_gb_per_chip(preset: str, chips: int) -> float:
    """16 bytes per parameter (float32 weights, both AdamW moments, the gradient), each array
    split by the shardings the default rules resolve to on data=1 x fsdp x tensor."""
    import jax

    from azr_jax.config import Config
    from azr_jax.models import get_preset, init_params
    from azr_jax.models.decoder import param_axes
    from azr_jax.run_presets import mesh_shape
    from azr_jax.sharding import logical_to_pspec

    c = get_preset(preset)
    tensor = tensor_degree(preset)
    mesh = mesh_shape("v5p-8" if chips == 4 else "v6e-8", tensor)  # what --mesh lays out
    shapes = jax.eval_shape(lambda: init_params(c, jax.random.key(0)))
    total = 0
    for shape, axes in zip(jax.tree_util.tree_leaves(shapes),
                           jax.tree_util.tree_leaves(param_axes(c), is_leaf=lambda x: isinstance(x, tuple))):
        spec = logical_to_pspec(axes, Config().mesh.rules, shape.shape, mesh)
        split = [math.prod(mesh[a] for a in ((s,) if isinstance(s, str) else s)) if s else 1 for s in spec]
        split += [1] * (len(shape.shape) - len(split))
        total += math.prod(d // n for d, n in zip(shape.shape, split)) * 16
    return total / 1e9


def test_the_kv_cache_table_follows_from_the_presets():
    text = training_md()
    rows = re.findall(r"\| (qwen2\.5-3b|qwen2\.5-7b|llama-3\.1-8b) \| ([\d.]+) GB \| ([\d.]+) GB \| ([\d.]+) GB \|", text)
    assert len(rows) == 3
    for preset, *stated in rows:
        assert [float(s) for s in stated] == [round(kv_cache_gb(preset, n / 8), 1) for n in (512, 128, 64)], preset


def test_the_per_chip_estimates_follow_from_the_presets():
    text = training_md()
    stated = re.search(r"the 7B models (\d+) / (\d+) GB, Llama-3\.1-8B (\d+) / (\d+) GB, Qwen3-4B-Base (\d+) / (\d+) GB"
                       r".*?the 14B models (\d+) / (\d+) GB", text)
    assert stated, "the sentence with the per-chip estimates moved: update this test"
    presets = ["qwen2.5-7b", "llama-3.1-8b", "qwen3-4b-base", "qwen2.5-14b"]
    computed = []
    for preset in presets:
        tensor = tensor_degree(preset)
        for chips in (8, 4):
            cache = kv_cache_gb(preset, 64 / (chips // tensor)) / tensor  # rows over fsdp, kv heads over tensor
            computed.append(round(train_state_gb_per_chip(preset, chips) + cache))
    assert [int(g) for g in stated.groups()] == computed
    whole = re.search(r"16 bytes per parameter, about (\d+) GB for a 7B model, (\d+) GB per chip on 8 chips", text)
    from azr_jax.models import get_preset

    params = get_preset("qwen2.5-7b").num_params()
    assert whole and [int(g) for g in whole.groups()] == [round(params * 16 / 1e9), round(params * 16 / 8e9)]


def rate_tables(doc: str):
    """(row, [ded, abd, ind, mean]) of the tables whose header has those four columns."""
    columns = None
    for line in (ROOT / doc).read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            columns = None
        elif {"deduction", "abduction", "induction", "mean"} <= set(cells):
            columns = [cells.index(name) for name in ("deduction", "abduction", "induction", "mean")]
        elif columns and not line.startswith("|---"):
            yield line, [float(cells[i]) for i in columns]


def seed_rows(doc: str):
    """Rows `| run | ... | **final** (ded / abd / ind) | +gain ± se |` of docs/nano.md's seed tables."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    for m in re.finditer(r"\*\*([\d.]+)\*\* \(([\d.]+) / ([\d.]+) / ([\d.]+)\) \| ([+−-][\d.]+) ±", text):
        yield m.group(0), [float(v) for v in m.groups()[:4]], float(m.group(5).replace("−", "-"))


def test_table_means_and_gains_follow_from_the_per_task_rates():
    wrong = []
    rows = [(doc, *row) for doc in ("README.md", "docs/nano.md") for row in rate_tables(doc)]
    assert len(rows) > 40  # guards the scan itself
    for doc, line, (ded, abd, ind, mean) in rows:
        # a per-task rate of one run is exact (k / 50); a mean over seeds is itself rounded
        exact = all(round(r, 2) == r for r in (ded, abd, ind))
        if abs((ded + abd + ind) / 3 - mean) > (5e-4 if exact else 1e-3) + 1e-9:
            wrong.append(f"{doc}: {line}")
    seeds = list(seed_rows("docs/nano.md"))
    assert len(seeds) > 20
    for row, (mean, ded, abd, ind), gain in seeds:
        exact = (ded + abd + ind) / 3
        if abs(exact - mean) > 5e-4 + 1e-9 or abs(exact - BASE - gain) > 5e-4 + 1e-9:
            wrong.append(f"docs/nano.md: {row}")
    assert not wrong, "\n".join(wrong)


def test_the_activation_estimates_follow_from_the_7b_preset():
    """The update's logits and attention scores and the prefill's scores, per row of the presets'
    longest rollout (prompt + response) for Qwen2.5-7B, whole and in the presets' chunks."""
    from azr_jax.config import load_config
    from azr_jax.models import get_preset

    cfg, model = load_config(str(ROOT / "configs" / "qwen2.5-7b.py")), get_preset("qwen2.5-7b")
    row = cfg.sampling.max_prompt_len + cfg.sampling.max_response_len
    chunk, prompt, heads = cfg.rl.logits_chunk, cfg.sampling.max_prompt_len, model.num_heads
    assert (row, chunk, cfg.rl.attention_chunk, cfg.sampling.prefill_chunk, heads) == (14240, 1024, 1024, 1024, 28)
    text = training_md()
    stated = re.search(r"logits, ([\d.]+) GB per row of 14 240 positions .*? which keeps ([\d.]+) GB of it live per row\. "
                       r"The update's attention scores are 14 240² × 4 bytes = ([\d.]+) GB per head and row, (\d+) GB "
                       r"for a 7B model's 28 heads; .*?, ([\d.]+) GB\. .*? 28 × 6144² × 4 bytes = ([\d.]+) GB per row .*? "
                       r"far, ([\d.]+) GB per row", text)
    assert stated, "the memory paragraph moved: update this test"
    gb = [row * model.vocab_size * 4, chunk * model.vocab_size * 4, row**2 * 4, heads * row**2 * 4,
          heads * chunk * row * 4, heads * prompt**2 * 4, heads * chunk * prompt * 4]
    assert [float(s) for s in stated.groups()] == [round(b / 1e9, 0 if i == 3 else 1) for i, b in enumerate(gb)]
