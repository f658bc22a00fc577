"""HF checkpoint import/export: transformers -> azr-jax (sharded) -> transformers, on random models.

Tolerances: float32 logits over left-padded rows of at most 16 tokens agree with transformers to
1e-4 (DESIGN.md §5); tensors and reloaded transformers logits must be bit-identical.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from hf_reference import hf_logits, hf_model, left_padded_batch, params_of, small_config
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from azr_jax.errors import UserError
from azr_jax.models.checkpoint_hf import Model, from_pretrained, parse_size, read_block
from azr_jax.models.decoder import init_params, param_shardings
from azr_jax.models.hf_mapping import hf_tensor_specs
from azr_jax.models.safetensors_io import SafetensorsReader, TensorPlan, plan_shards, write_checkpoint
from azr_jax.sharding import make_mesh

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
RULES = {"batch": ["data", "fsdp"], "length": None, "vocab": "tensor", "embed": "fsdp", "heads": "tensor",
         "kv_heads": "tensor", "head_dim": None, "mlp": "tensor", "layers": None, "norm": None,
         "cache_length": None}

# name -> (config, HF save shard size (None = one file), mesh shape (None = one device), our save shard size)
CASES = {
    "qwen2-untied": (small_config("qwen2"), "100KB", {"data": 2, "fsdp": 2, "tensor": 2}, None),
    "qwen2-tied": (small_config("qwen2", tie_word_embeddings=True), None, {"fsdp": 4, "tensor": 2}, "60KB"),
    "llama-llama3rope": (small_config("llama", rope_scaling=LLAMA3_ROPE), "100KB", {"fsdp": 8}, "200KB"),
    "qwen3": (small_config("qwen3"), None, None, None),
}


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Qwen2's split pattern: transformers 5 rebuilds a qwen2/qwen3 checkpoint's tokenizer with it
    # whatever tokenizer.json says, so a test tokenizer must already use it to compare equal.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([f"def f{i}(x):\n    return x + {i}\n" for i in range(100)], trainer)
    d = tmp_path_factory.mktemp("tok")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    return d


def _save_hf(model, directory, shard_size, tokenizer_dir=None):
    kwargs = {} if shard_size is None else {"max_shard_size": shard_size}
    model.save_pretrained(directory, **kwargs)
    if tokenizer_dir is not None:
        for f in tokenizer_dir.iterdir():
            shutil.copy(f, directory / f.name)
    return directory


@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_to_ours_to_transformers(case, tmp_path, tokenizer_files):
    cfg, hf_shard, mesh_shape, our_shard = CASES[case]
    hf = hf_model(cfg, seed=1, init_std=0.1)
    src = _save_hf(hf, tmp_path / "src", hf_shard, tokenizer_files)
    assert (src / "model.safetensors.index.json").exists() == (hf_shard is not None)

    mesh = None if mesh_shape is None else make_mesh(mesh_shape)
    ours = from_pretrained(src, mesh=mesh, rules=RULES)
    assert ours.config == cfg.replace(max_position_embeddings=cfg.max_position_embeddings)

    # Every device holds exactly its block of the full parameter, in the planned sharding.
    expected = params_of(cfg, hf)
    shardings = None if mesh is None else param_shardings(cfg, mesh, RULES)
    split = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(ours.params):
        full = expected
        for key in path:
            full = full[key.key]
        assert leaf.dtype == jnp.float32 and leaf.shape == full.shape
        if shardings is not None:
            want = shardings
            for key in path:
                want = want[key.key]
            assert leaf.sharding == want, path
        else:
            assert leaf.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0]), path
        for shard in leaf.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])
            split += shard.data.shape != full.shape
    assert (split > 0) == (mesh is not None)

    tokens, mask, positions = left_padded_batch([16, 9, 3], 16, cfg.vocab_size, seed=2)
    ref = hf_logits(hf, tokens, mask, positions)
    got = np.asarray(ours.logits(tokens, mask))
    assert got.shape == (3, 16, cfg.vocab_size)
    assert np.abs(got - ref)[mask == 1].max() < 1e-4

    dst = tmp_path / "dst"
    ours.save_pretrained(dst, max_shard_size=our_shard or "5GB")
    assert (dst / "model.safetensors.index.json").exists() == (our_shard is not None)
    with SafetensorsReader(dst) as reader:
        assert ("lm_head.weight" in reader.tensors) == (not cfg.tie_word_embeddings)
    reloaded = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32, attn_implementation="eager")
    before, after = hf.state_dict(), reloaded.state_dict()
    assert sorted(before) == sorted(after)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    np.testing.assert_array_equal(hf_logits(reloaded, tokens, mask, positions), ref)
    assert json.loads((dst / "generation_config.json").read_text())["eos_token_id"] == 2
    theirs_tok = AutoTokenizer.from_pretrained(dst)
    text = "def f7(x):\n    return x + 7<|im_end|>"
    assert theirs_tok(text, add_special_tokens=False)["input_ids"] == ours.tokenizer.encode(text)
    assert theirs_tok.eos_token_id == ours.tokenizer.eos_id == 2
    assert ours.tokenizer is ours.tokenizer  # read from the directory once


def test_slice_reads_match_hf_mapping_for_every_tensor(tmp_path):
    """read_block(spec, any block) == hf_mapping's to_ours(full tensor)[block], all layouts."""
    rng = np.random.default_rng(0)
    for arch in ("qwen2", "qwen3"):
        cfg = small_config(arch, num_layers=1)
        specs = hf_tensor_specs(cfg)
        tensors = {s.hf_name: rng.standard_normal(s.hf_shape).astype(np.float32) for s in specs}
        save_file(tensors, str(tmp_path / "model.safetensors"))
        with SafetensorsReader(tmp_path) as reader:
            for spec in specs:
                full = spec.to_ours(tensors[spec.hf_name])
                whole = [(0, d) for d in full.shape]
                np.testing.assert_array_equal(read_block(reader, spec, full.shape, whole), full)
                for _ in range(3):
                    bounds = []
                    for d in full.shape:
                        a = int(rng.integers(0, d))
                        bounds.append((a, int(rng.integers(a + 1, d + 1))))
                    block = read_block(reader, spec, full.shape, bounds)
                    np.testing.assert_array_equal(block, full[tuple(slice(a, b) for a, b in bounds)])


def test_bfloat16_cast_on_load_and_export(tmp_path):
    cfg = small_config("llama", tie_word_embeddings=True)
    hf = hf_model(cfg, seed=3)
    src = _save_hf(hf, tmp_path / "src", None)
    ours = from_pretrained(src, dtype=jnp.bfloat16)
    expected = params_of(cfg, hf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(ours.params):
        full = expected
        for key in path:
            full = full[key.key]
        assert leaf.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(leaf), full.astype(ml_dtypes.bfloat16))
    assert ours.compute_dtype == jnp.bfloat16
    ours.save_pretrained(tmp_path / "dst")
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dst")
    assert reloaded.dtype == torch.bfloat16
    for name, value in hf.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value.to(torch.bfloat16)), name
    # Without a dtype, each tensor keeps the dtype it is stored in.
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(from_pretrained(tmp_path / "dst").params)):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_random_azr_model_exports_to_transformers(tmp_path):
    """A model that never came from HF (init_params) round-trips through transformers."""
    cfg = small_config("qwen2", tie_word_embeddings=True)
    model = Model(cfg, init_params(cfg, jax.random.key(0)))
    with pytest.raises(UserError, match="no tokenizer"):
        model.tokenizer
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager")
    tokens, mask, positions = left_padded_batch([12, 5], 12, cfg.vocab_size, seed=4)
    diff = np.abs(np.asarray(model.logits(tokens, mask)) - hf_logits(hf, tokens, mask, positions))
    assert diff[mask == 1].max() < 1e-4
    again = from_pretrained(tmp_path)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_saving_again_leaves_only_the_new_layout(tmp_path):
    """Sharded in 3, then in more pieces, then in one file, into the same directory: each time
    exactly one set of weights remains, and it loads."""
    cfg = small_config("qwen2", tie_word_embeddings=False)
    model = Model(cfg, init_params(cfg, jax.random.key(1)))
    total = sum(np.asarray(x).nbytes for x in jax.tree.leaves(model.params))

    def weight_files():
        return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("model"))

    model.save_pretrained(tmp_path, max_shard_size=total // 3 + 1)
    first = weight_files()
    model.save_pretrained(tmp_path, max_shard_size=total // 6 + 1)
    second = weight_files()
    assert not set(first) & set(second) - {"model.safetensors.index.json"}
    n = len(second) - 1
    assert n > len(first) - 1 and second == sorted([f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
                                                  + ["model.safetensors.index.json"])
    model.save_pretrained(tmp_path)
    assert weight_files() == ["model.safetensors"]
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(from_pretrained(tmp_path).params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_saving_to_a_file_path_is_a_user_error(tmp_path):
    """save_pretrained onto a file raised FileExistsError ("File exists")."""
    cfg = small_config("qwen2", num_layers=1)
    model = Model(cfg, init_params(cfg, jax.random.key(0)))
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(UserError, match=r"cannot save to .*afile: it is a file, not a directory$"):
        model.save_pretrained(tmp_path / "afile")
    with pytest.raises(UserError, match=r"cannot save to .*afile/sub: a parent of it is a file"):
        model.save_pretrained(tmp_path / "afile" / "sub")
    assert (tmp_path / "afile").read_text() == "keep"


def test_a_save_that_fails_part_way_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """Files are written under temporary names and renamed once all are complete: a failure on
    the last tensor (a full disk, a dead host) leaves the old weights loadable and no partial
    file; the next save also clears temporaries a killed save left behind."""
    import azr_jax.models.checkpoint_hf as checkpoint_hf

    cfg = small_config("qwen2", tie_word_embeddings=False)
    old = Model(cfg, init_params(cfg, jax.random.key(1)))
    total = sum(np.asarray(x).nbytes for x in jax.tree.leaves(old.params))
    old.save_pretrained(tmp_path, max_shard_size=total // 3 + 1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    new = Model(cfg, init_params(cfg, jax.random.key(2)))
    last = hf_tensor_specs(cfg)[-1].hf_name
    real_to_host = checkpoint_hf._to_host
    calls = []

    def failing_to_host(leaf):
        calls.append(1)
        if len(calls) == len(hf_tensor_specs(cfg)):
            raise OSError(28, f"No space left on device (writing {last})")
        return real_to_host(leaf)

    monkeypatch.setattr(checkpoint_hf, "_to_host", failing_to_host)
    with pytest.raises(OSError, match="No space left"):
        new.save_pretrained(tmp_path)  # one file, over the old three shards
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    for a, b in zip(jax.tree.leaves(old.params), jax.tree.leaves(from_pretrained(tmp_path).params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    (tmp_path / ".model.safetensors.partial").write_bytes(b"left by a killed save")
    new.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if "model" in p.name and "config" not in p.name) == [
        "model.safetensors"]
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(from_pretrained(tmp_path).params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------------------------
# Bad input: one UserError with a message that says what is wrong
# ----------------------------------------------------------------------------------------------


def _edit_config(**changes):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(changes)
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


def _truncate(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _index_to_missing_file(d):
    with SafetensorsReader(d) as reader:
        names = list(reader.tensors)
    (d / "model.safetensors").rename(d / "weights.bin")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "gone.safetensors" for n in names}}))


def _index_places_a_tensor_in_a_shard_that_lacks_it(d):
    with SafetensorsReader(d) as reader:
        names = list(reader.tensors)
    (d / "model.safetensors").rename(d / "shard.safetensors")
    weight_map = {n: "shard.safetensors" for n in names + ["model.layers.0.mlp.extra.weight"]}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


BAD_CHECKPOINTS = {
    "missing config.json": (lambda d: (d / "config.json").unlink(), "has no config.json"),
    "config.json not JSON": (lambda d: (d / "config.json").write_text("{oops"), "not valid JSON"),
    "unsupported architecture": (_edit_config(model_type="gpt2", architectures=["GPT2LMHeadModel"]),
                                 "unsupported HF model_type 'gpt2'"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no weights in"),
    "truncated safetensors": (_truncate, "truncated or not a safetensors file"),
    "shape mismatch": (_edit_config(intermediate_size=96), r"gate_proj.weight has shape \[160, 64\]"),
    "missing layer": (_edit_config(num_hidden_layers=3), "lacks tensor model.layers.2"),
    "extra tensors": (_edit_config(num_hidden_layers=1),  # layer 1's nine tensors: three named
                      r"does not account for: (model\.layers\.1\.[a-z_.]+, ){2}model\.layers\.1\.[a-z_.]+ \(and 6 more\)$"),
    "index names a missing shard": (_index_to_missing_file, "refers to gone.safetensors"),
    "index places a tensor in a shard that lacks it": (
        _index_places_a_tensor_in_a_shard_that_lacks_it,
        "shard.safetensors lacks tensor.* that model.safetensors.index.json places there: model.layers.0.mlp.extra"),
}


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    cfg = small_config("llama")
    return _save_hf(hf_model(cfg, seed=5), tmp_path_factory.mktemp("good"), None)


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_raises_one_clear_user_error(case, good_checkpoint, tmp_path):
    corrupt, message = BAD_CHECKPOINTS[case]
    d = tmp_path / "ckpt"
    shutil.copytree(good_checkpoint, d)
    corrupt(d)
    with pytest.raises(UserError, match=message) as info:
        from_pretrained(d)
    assert "\n" not in str(info.value)


def test_missing_directory_and_missing_tokenizer(good_checkpoint, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    (tmp_path / "afile").write_text("")  # there, but a file: not said to be missing
    with pytest.raises(UserError, match=r"checkpoint directory .*afile is not a directory$"):
        from_pretrained(tmp_path / "afile")
    model = from_pretrained(good_checkpoint)  # loads without a tokenizer ...
    with pytest.raises(UserError, match="no tokenizer in"):
        model.tokenizer  # ... and says so only when one is needed
    with pytest.raises(UserError, match="attention_mask shape"):
        model.logits(np.zeros((1, 4), np.int32), np.ones((1, 5), np.int32))
    with pytest.raises(UserError, match=r"tokens must be a non-empty \[batch, length\], got shape \(4,\)"):
        model.logits(np.array([1, 5, 9, 3]))
    for empty in ((0, 4), (2, 0)):
        with pytest.raises(UserError, match=rf"got shape \({empty[0]}, {empty[1]}\)"):
            model.logits(np.zeros(empty, np.int32))


def test_dtype_must_be_a_float_type_and_mesh_a_mesh(good_checkpoint):
    """dtype=jnp.int32 cast the weights to integers; an unknown name raised numpy's TypeError."""
    for ok, name in (("bfloat16", "bfloat16"), (jnp.bfloat16, "bfloat16"), (np.float16, "float16")):
        assert from_pretrained(good_checkpoint, dtype=ok).params["embed"]["embedding_vd"].dtype == name
    for bad in (jnp.int32, bool, "bf16", "auto", torch.bfloat16):
        with pytest.raises(UserError, match=r"dtype .* is not supported; use one of float32, bfloat16"):
            from_pretrained(good_checkpoint, dtype=bad)
    with pytest.raises(UserError, match=r"mesh must be a jax.sharding.Mesh .*got dict$"):
        from_pretrained(good_checkpoint, mesh={"fsdp": 1})  # raised AttributeError: no attribute 'size'


def test_token_ids_outside_the_table_are_refused(good_checkpoint):
    """jnp.take would wrap -1 and turn vocab_size into NaN logits for the whole row."""
    model = from_pretrained(good_checkpoint)
    vocab = model.config.vocab_size
    assert np.isfinite(np.asarray(model.logits(np.array([[1, 2, vocab - 1]])))).all()
    for bad in (vocab, -1):
        with pytest.raises(UserError, match="token ids must be in"):
            model.logits(np.array([[1, 2, bad]]))
        with pytest.raises(UserError, match="token ids must be in"):
            model.hidden_states(np.array([[bad, 2, 3]]), np.array([[0, 1, 1]]))  # padding too


def test_token_ids_are_checked_before_the_int32_cast(good_checkpoint):
    """An int64 id past 2**32 wrapped into the table and a float id was truncated, silently."""
    model = from_pretrained(good_checkpoint)
    expected = np.asarray(model.logits(np.array([[5, 6]], np.int32)))
    np.testing.assert_array_equal(np.asarray(model.logits(np.array([[5, 6]], np.int64))), expected)
    np.testing.assert_array_equal(np.asarray(model.logits([[5, 6]])), expected)  # a Python list
    with pytest.raises(UserError, match=r"token ids must be in \[0, vocab_size=512\), got min 6, max 4294967301"):
        model.logits(np.array([[2**32 + 5, 6]], np.int64))
    for bad in (np.array([[5.7, 6.0]]), np.array([[True, False]])):
        with pytest.raises(UserError, match=f"token ids must be integers, got dtype {bad.dtype}"):
            model.logits(bad)


def test_any_non_zero_mask_entry_is_a_token_as_in_transformers(good_checkpoint):
    """A float mask of 0.5 was cast to 0 (every token padding) and a mask of 2s doubled the
    positions; transformers attends wherever the mask is non-zero."""
    model = from_pretrained(good_checkpoint)
    tokens = np.array([[0, 0, 5, 6, 7], [9, 8, 5, 6, 7]])
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    expected = np.asarray(model.logits(tokens, mask))
    for other in (mask.astype(bool), mask * 2, mask * 0.5, -mask):
        np.testing.assert_array_equal(np.asarray(model.logits(tokens, other)), expected)


def test_logits_under_the_callers_jit(good_checkpoint):
    """The id range check called int() on a tracer: jax.jit(model.logits) raised."""
    model = from_pretrained(good_checkpoint)
    tokens = np.array([[0, 0, 5, 6, 7], [9, 8, 5, 6, 7]])
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_allclose(np.asarray(jax.jit(model.logits)(tokens, mask)),
                               np.asarray(model.logits(tokens, mask)), atol=1e-6)
    hidden = jax.jit(lambda t: model.hidden_states(t))(tokens)
    assert hidden.shape == (model.config.num_layers + 1, 2, 5, model.config.hidden_size)


def test_a_directory_with_both_layouts_loads_the_single_file_as_transformers(good_checkpoint, tmp_path, caplog):
    """A stale sharded copy beside model.safetensors: transformers reads the single file, and so
    must we, or the two libraries would compare different weights."""
    d = tmp_path / "both"
    shutil.copytree(good_checkpoint, d)
    stale_cfg = small_config("llama")
    Model(stale_cfg, init_params(stale_cfg, jax.random.key(9))).save_pretrained(
        tmp_path / "stale", max_shard_size=20_000)
    for f in (tmp_path / "stale").glob("model*"):
        if f.name != "model.safetensors":
            shutil.copy(f, d / f.name)
    assert (d / "model.safetensors.index.json").is_file() and (d / "model.safetensors").is_file()
    ours = from_pretrained(d)
    theirs = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    tokens = np.array([[1, 5, 9, 3]])
    with torch.no_grad():
        expected = theirs(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours.logits(tokens)), expected, atol=2e-4)
    assert "reading model.safetensors as transformers does" in caplog.text


@pytest.mark.parametrize("stray_sorts", ["before", "after"])
def test_a_tensor_copied_into_another_shard_loads_as_transformers_loads_it(tmp_path, caplog, stray_sorts):
    """The index places a tensor in one shard; a second copy (other values) sits in another.
    transformers reads every tensor of every shard, shards in name order, so the copy in the
    shard that sorts last wins, whatever the index says; we must read the same weights."""
    from safetensors.numpy import load_file

    d = tmp_path / "ckpt"
    _save_hf(hf_model(small_config("llama"), seed=3), d, "100KB")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"] = dict(reversed(index["weight_map"].items()))  # its order is no guide
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    shards = sorted(set(weight_map.values()))
    assert len(shards) >= 2
    home, other = (shards[-1], shards[0]) if stray_sorts == "before" else (shards[0], shards[-1])
    name = sorted(n for n, f in weight_map.items() if f == home)[0]
    tensors = load_file(str(d / other))
    tensors[name] = np.full_like(load_file(str(d / home))[name], 3.0)
    save_file(tensors, str(d / other), metadata={"format": "pt"})
    theirs = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    assert bool((theirs.state_dict()[name] == 3.0).all()) == (stray_sorts == "after")
    ours = from_pretrained(d)
    tokens = np.array([[1, 5, 9, 3]])
    with torch.no_grad():
        expected = theirs(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours.logits(tokens)), expected, atol=2e-4)
    assert f"{other} holds tensor(s) that model.safetensors.index.json places in another file: {name}" in caplog.text


def test_shards_fill_up_to_the_limit_and_tensor_data_is_8_byte_aligned(tmp_path):
    """A shard may hold exactly max_shard_bytes. The header is padded with spaces so the tensor
    data starts at a multiple of 8 bytes, as the safetensors format asks (zero-copy readers)."""
    plans = [TensorPlan(f"t{i}", (2,), np.dtype(np.float32)) for i in range(4)]  # 8 bytes each
    assert [[t.name for t in shard] for shard in plan_shards(plans, 16)] == [["t0", "t1"], ["t2", "t3"]]
    for n in range(1, 5):  # headers of several lengths
        (path,) = write_checkpoint(tmp_path / str(n), plans[:n], lambda t: np.ones(t.shape, t.dtype))
        header_len = int.from_bytes(path.read_bytes()[:8], "little")
        assert header_len % 8 == 0
        with SafetensorsReader(tmp_path / str(n)) as reader:
            assert sorted(reader.tensors) == [f"t{i}" for i in range(n)]
            np.testing.assert_array_equal(reader.read("t0"), np.ones(2, np.float32))


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20 and parse_size(123) == 123
    # decimal kilobytes as transformers counts them, fractions, any case, spaces
    assert parse_size("500KB") == 500_000 and parse_size("1.5GB") == 1_500_000_000 and parse_size(" 3 kib ") == 3072
    for bad in ("lots", "5XB", 0, "-3MB", "0MB", True):
        with pytest.raises(UserError, match="invalid shard size"):
            parse_size(bad)


def test_a_tied_config_with_its_own_different_head_must_say_which_head(tmp_path):
    """Tied in config.json, yet the file holds an lm_head.weight: a copy of the embeddings loads
    (some exporters write one); a different head is refused, since transformers 5 unties such a
    model and older versions tie it. Set untied, the file's head is the one used."""
    from safetensors.numpy import load_file

    d = _save_hf(hf_model(small_config("qwen2", tie_word_embeddings=True), seed=3), tmp_path / "tied", None)
    tensors = load_file(str(d / "model.safetensors"))
    assert "lm_head.weight" not in tensors
    embed = tensors["model.embed_tokens.weight"]
    save_file({**tensors, "lm_head.weight": embed.copy()}, str(d / "model.safetensors"))
    tied = from_pretrained(d)
    assert tied.config.tie_word_embeddings and "lm_head_dv" not in tied.params

    head = embed.copy()
    head[-1] += 1.0  # differs in the last vocabulary row only
    save_file({**tensors, "lm_head.weight": head}, str(d / "model.safetensors"))
    with pytest.raises(UserError, match="also holds an lm_head.weight that differs from model.embed_tokens.weight"):
        from_pretrained(d)
    longer = np.concatenate([embed, embed[:1]])  # the embeddings and one row more: not a copy either
    save_file({**tensors, "lm_head.weight": longer}, str(d / "model.safetensors"))
    with pytest.raises(UserError, match="also holds an lm_head.weight that differs from model.embed_tokens.weight"):
        from_pretrained(d)
    save_file({**tensors, "lm_head.weight": head}, str(d / "model.safetensors"))
    _edit_config(tie_word_embeddings=False)(d)
    untied = from_pretrained(d)
    np.testing.assert_array_equal(np.asarray(untied.params["lm_head_dv"]), head.T)


# ----------------------------------------------------------------------------------------------
# `azr-jax convert` in-process, on a tiny random-init run (tests/train/test_train_e2e.py converts a
# real run, slowly): the run's Orbax checkpoint is stood in for by eval.cli.run_params, which
# fills each parameter with the step it restores
# ----------------------------------------------------------------------------------------------


def _convert_args(run, out, **given):
    import argparse

    return argparse.Namespace(**{"run": str(run), "step": None, "out": str(out), "dtype": None,
                                 "max_shard_size": "5GB", "overrides": [], **given})


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """(run directory, the steps asked of run_params so far)."""
    import sys
    from pathlib import Path

    from azr_jax import train_setup
    from azr_jax.config import load_config, to_json
    from azr_jax.eval import cli as eval_cli

    train_tests = Path(__file__).parents[1] / "train"
    if str(train_tests) not in sys.path:
        sys.path.insert(0, str(train_tests))
    from tiny_run import make_tokenizer, tiny_overrides

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(str(train_tests / "tiny_config.py"), tiny_overrides(make_tokenizer(tmp_path / "tok")))
    (run / "config.json").write_text(to_json(cfg))
    restored = []

    def run_params(cfg, policy, workdir, step):
        restored.append(step)
        step = 3 if step is None else step  # the newest of the stand-in's steps
        return jax.tree.map(lambda s: jax.device_put(np.full(s.shape, step, np.float32), s.sharding),
                            policy.params), step

    def no_init(seed):
        raise AssertionError("convert initialised parameters: they come from the checkpoint alone")

    monkeypatch.setattr(eval_cli, "run_params", run_params)
    monkeypatch.setattr(train_setup, "init_key", no_init)
    return run, restored


def test_convert_writes_the_step_asked_for_in_the_dtype_asked_for(tiny_run, tmp_path, capsys, monkeypatch):
    from safetensors.numpy import load_file

    from azr_jax import convert_cli
    from azr_jax.config import load_config
    from azr_jax.convert_cli import main
    from azr_jax.models.tokenizer import Tokenizer, load_tokenizer

    run, restored = tiny_run
    # --step 1 without --dtype: the run's model.param_dtype (here from --set); 40KB shards split
    # the 84 KB model.
    step1 = tmp_path / "step1"
    assert main(_convert_args(run, step1, step=1, max_shard_size="40KB", overrides=["model.param_dtype=bfloat16"])) == 0
    printed = capsys.readouterr()
    said = json.loads(printed.out.splitlines()[-1])
    assert (said["step"], said["dtype"]) == (1, "bfloat16") and restored == [1]
    assert "SentencePiece" not in printed.err  # a tokenizer.json loads in transformers as it is
    files = set(json.loads((step1 / "model.safetensors.index.json").read_text())["weight_map"].values())
    weights = [w for name in files for w in load_file(str(step1 / name)).values()]
    assert len(files) > 1 and {w.dtype for w in weights} == {np.dtype(ml_dtypes.bfloat16)}
    # the whole record: where it came from and went, and the parameters written
    assert said == {"run": str(run), "step": 1, "out": str(step1), "dtype": "bfloat16",
                    "params": sum(w.size for w in weights)}
    assert all(np.all(w == 1) for w in weights)  # step 1's weights
    written = json.loads((step1 / "config.json").read_text())
    assert written["torch_dtype"] == "bfloat16"
    # A random init's special ids are its tokenizer's, not the preset's family's (Qwen's 151643).
    tok = load_tokenizer(load_config(str(run / "config.json")).model.tokenizer)
    assert (written["bos_token_id"], written["eos_token_id"]) == (tok.bos_id, tok.eos_id) and tok.eos_id < 1000
    # No --step: the newest; --dtype wins over model.param_dtype (float32 in the run's config).
    # --out may be an existing empty directory. The generation config exported_metadata gives
    # (a base's own file) is the one written, and a SentencePiece tokenizer gets its note.
    newest = tmp_path / "newest"
    newest.mkdir()
    real_metadata = convert_cli.exported_metadata
    monkeypatch.setattr(convert_cli, "exported_metadata",
                        lambda policy, section: (real_metadata(policy, section)[0], {"max_new_tokens": 7}))
    monkeypatch.setattr(Tokenizer, "is_sentencepiece", True)
    assert main(_convert_args(run, newest, dtype="bfloat16")) == 0
    printed = capsys.readouterr()
    said = json.loads(printed.out.splitlines()[-1])
    assert (said["step"], said["dtype"]) == (3, "bfloat16") and restored == [1, None]
    assert json.loads((newest / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert json.loads((newest / "generation_config.json").read_text()) == {"max_new_tokens": 7}
    assert f"note: the tokenizer is a SentencePiece model ({newest}/tokenizer.model)" in printed.err


def test_convert_refuses_bad_arguments_before_restoring_anything(tiny_run, tmp_path, monkeypatch):
    import argparse

    from azr_jax import train_setup
    from azr_jax.convert_cli import add_arguments, main
    from azr_jax.models import checkpoint_hf

    run, restored = tiny_run
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):  # --dtype is one of float32, bfloat16, float16
        parser.parse_args(["--run", str(run), "--out", str(tmp_path / "o"), "--dtype", "int8"])
    real_load_policy = train_setup.load_policy

    def no_loading(*args, **kwargs):
        raise AssertionError("the policy was loaded before the arguments were checked")

    monkeypatch.setattr(train_setup, "load_policy", no_loading)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    not_a_run = tmp_path / "checkpoints"  # a directory, but no config.json in it
    not_a_run.mkdir()
    for args, match in [(_convert_args(tmp_path / "nowhere", tmp_path / "a"), "is not a training run directory"),
                        (_convert_args(not_a_run, tmp_path / "a"), "checkpoints is not a training run directory"),
                        (_convert_args(run, full), "is not empty"),
                        (_convert_args(run, tmp_path / "b", max_shard_size="lots"), "invalid shard size"),
                        (_convert_args(run, tmp_path / "d", step=0), "--step must be a positive step number, got 0"),
                        (_convert_args(run, tmp_path / "e", step=-2), "--step must be a positive step number, got -2")]:
        with pytest.raises(UserError, match=match):
            main(args)
    assert restored == []
    # A write that fails (a full disk) is one line naming --out.
    monkeypatch.setattr(train_setup, "load_policy", real_load_policy)

    def disk_full(self, path, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_hf.Model, "save_pretrained", disk_full)
    with pytest.raises(UserError, match="writing .*c failed: No space left on device"):
        main(_convert_args(run, tmp_path / "c"))


def test_convert_arguments_default_to_the_newest_step_the_runs_dtype_and_5GB_shards():
    import argparse

    from azr_jax.convert_cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--run", "r", "--out", "o"])
    assert (args.step, args.dtype, args.max_shard_size, args.overrides) == (None, None, "5GB", [])
    args = parser.parse_args(["--run", "r", "--out", "o", "--step", "200", "--set", "a=1", "--set", "b=2"])
    assert args.step == 200 and args.overrides == ["a=1", "b=2"]  # a number, as run_params compares it


def test_exported_metadata_keeps_a_bases_ids_only_with_its_own_tokenizer(tmp_path):
    from types import SimpleNamespace

    from azr_jax.convert_cli import exported_metadata
    from azr_jax.models import get_preset

    (tmp_path / "generation_config.json").write_text(json.dumps({"max_new_tokens": 7}))
    preset = get_preset("qwen2.5-0.5b")
    tok = SimpleNamespace(bos_id=1, eos_id=2, pad_id=0, eos_ids=(2, 5))
    policy = SimpleNamespace(config=preset, tokenizer=tok)
    # the base's own tokenizer: its config and its generation_config.json as they are
    assert exported_metadata(policy, SimpleNamespace(hf_dir=str(tmp_path), tokenizer=None)) == (
        preset, {"max_new_tokens": 7})
    # a base without the file: none to keep (the export derives one), not an error
    (tmp_path / "bare").mkdir()
    assert exported_metadata(policy, SimpleNamespace(hf_dir=str(tmp_path / "bare"), tokenizer=None)) == (preset, None)
    # another tokenizer (beside a base, or a random init's): its ids, eos first and the other stop ids extra
    for section in (SimpleNamespace(hf_dir=str(tmp_path), tokenizer="tok.json"),
                    SimpleNamespace(hf_dir=None, tokenizer="tok.json")):
        model_cfg, generation = exported_metadata(policy, section)
        assert generation is None
        assert (model_cfg.bos_token_id, model_cfg.eos_token_id, model_cfg.pad_token_id,
                model_cfg.extra_eos_token_ids) == (1, 2, 0, (5,))


def _zero_params(cfg):
    """Float32 zeros of every parameter's shape: for what needs no meaningful weights (no compile)."""
    from azr_jax.models.decoder import param_shapes

    return jax.tree.map(lambda shape: np.zeros(shape, np.float32), param_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, tuple))


def _tiny_model(cfg, **kwargs):
    """A Model whose only parameter is a 1 x 1 embedding: enough for what needs no forward pass."""
    return Model(cfg, {"embed": {"embedding_vd": np.zeros((1, 1), np.float32)}}, **kwargs)


def test_generation_config_without_the_checkpoints_own():
    """Derived from the config: one eos id as a number, several as a list, unknown ids left out;
    a checkpoint's own file is handed out as a copy the caller may change."""
    cfg = small_config("llama")
    assert _tiny_model(cfg).generation_config_dict() == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    several = cfg.replace(extra_eos_token_ids=(5, 7))
    assert _tiny_model(several).generation_config_dict()["eos_token_id"] == [2, 5, 7]
    assert _tiny_model(cfg.replace(eos_token_id=None, pad_token_id=None)).generation_config_dict() == {
        "bos_token_id": 1}
    own = _tiny_model(cfg, generation_config={"eos_token_id": 9})
    own.generation_config_dict()["eos_token_id"] = 10
    assert own.generation_config_dict() == {"eos_token_id": 9}


def test_loading_hands_on_the_checkpoints_generation_config_and_skips_stored_rotary_tables(good_checkpoint, tmp_path):
    """generation_config.json is kept as it is (an export writes it back unchanged); a stored
    rotary_emb.inv_freq (older exporters write one) is recomputed by the model, not refused."""
    from safetensors.numpy import load_file

    d = tmp_path / "ckpt"
    shutil.copytree(good_checkpoint, d)
    own = {"bos_token_id": 1, "eos_token_id": [2, 7], "max_new_tokens": 5}
    (d / "generation_config.json").write_text(json.dumps(own))
    tensors = load_file(str(d / "model.safetensors"))
    save_file({**tensors, "model.layers.1.self_attn.rotary_emb.inv_freq": np.ones(12, np.float32)},
              str(d / "model.safetensors"))
    assert from_pretrained(d).generation_config_dict() == own


def test_loading_on_a_mesh_follows_the_rules_given(good_checkpoint):
    """Rules other than the config's defaults place the parameters, and the model keeps them."""
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    rules = {**RULES, "embed": None, "vocab": "fsdp"}
    model = from_pretrained(good_checkpoint, mesh=mesh, rules=rules)
    want = param_shardings(model.config, mesh, rules)
    assert want["embed"]["embedding_vd"] != param_shardings(model.config, mesh, RULES)["embed"]["embedding_vd"]
    for path, leaf in jax.tree_util.tree_leaves_with_path(model.params):
        expected = want
        for key in path:
            expected = expected[key.key]
        assert leaf.sharding == expected, path
    assert model.rules == rules


def test_a_tokenizer_given_as_an_object_is_exported_and_shards_default_to_5GB(tmp_path, tokenizer_files, monkeypatch):
    """`azr-jax convert` hands the run's tokenizer over as an object, with no directory behind
    it: the export still carries it. Unless told, files are cut at transformers' 5 GB."""
    import azr_jax.models.checkpoint_hf as checkpoint_hf
    from azr_jax.models.tokenizer import load_tokenizer

    cfg = small_config("qwen2", num_layers=1, tie_word_embeddings=True)
    model = Model(cfg, _zero_params(cfg), tokenizer=load_tokenizer(tokenizer_files))
    assert model.has_tokenizer()
    limits, real_write = [], checkpoint_hf.write_checkpoint

    def write(*args, max_shard_bytes, **kwargs):
        limits.append(max_shard_bytes)
        return real_write(*args, max_shard_bytes=max_shard_bytes, **kwargs)

    monkeypatch.setattr(checkpoint_hf, "write_checkpoint", write)
    model.save_pretrained(tmp_path)
    assert limits == [5 * 10**9]
    text = "def f7(x):\n    return x + 7"
    assert load_tokenizer(tmp_path).encode(text) == model.tokenizer.encode(text)


def test_compute_dtype_given_wins_over_the_parameter_dtype():
    """float32 weights, bfloat16 matmuls: the states between the layers are bfloat16."""
    cfg = small_config("llama", num_layers=1)
    assert Model(cfg, _zero_params(cfg)).compute_dtype == jnp.float32
    half = Model(cfg, _zero_params(cfg), compute_dtype=jnp.bfloat16)
    assert half.compute_dtype == jnp.bfloat16
    assert half.hidden_states(np.array([[1, 5, 9, 3]])).dtype == jnp.bfloat16


def test_hidden_states_are_transformers_in_its_order(good_checkpoint):
    """[L + 1, B, T, D]: each layer's input (the embeddings first), then the final normed state."""
    model = from_pretrained(good_checkpoint)
    theirs = AutoModelForCausalLM.from_pretrained(good_checkpoint, dtype=torch.float32, attn_implementation="eager")
    tokens, mask, positions = left_padded_batch([6, 4], 6, model.config.vocab_size, seed=5)
    _, expected = hf_logits(theirs, tokens, mask, positions, hidden=True)
    ours = np.asarray(model.hidden_states(tokens, mask))
    assert ours.shape == (model.config.num_layers + 1, 2, 6, model.config.hidden_size) == (len(expected),) + expected[0].shape
    for got, want in zip(ours, expected):
        assert np.abs(got - want)[mask == 1].max() < 1e-4


def test_each_model_computes_under_its_own_rules():
    """The activation constraints are read when the forward pass is traced: a second model of
    the same shapes on other rules must trace its own, not run the first one's."""
    from jax.sharding import PartitionSpec as P

    cfg = small_config("llama", num_layers=1, vocab_size=64, hidden_size=16, intermediate_size=32, head_dim=8)
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    tokens = np.ones((4, 4), np.int32)
    specs = [Model(cfg, _zero_params(cfg), mesh=mesh, rules=rules).logits(tokens).sharding.spec
             for rules in (RULES, {**RULES, "batch": None, "vocab": "fsdp"})]
    assert specs == [P("fsdp", None, "tensor"), P(None, None, "fsdp")]


def test_written_tensors_take_the_planned_dtype_and_shape(tmp_path):
    """write_checkpoint stores what `produce` returns in the planned dtype (a float64 array or a
    list is converted) under transformers' header metadata, refuses an array of another shape
    even with as many elements, records the bytes in the index's total_size, clears a killed
    save's temporaries, and with write=False still calls `produce` once per tensor in order but
    creates nothing."""
    plans = [TensorPlan("a", (2, 3), np.dtype(np.float32)), TensorPlan("b", (4,), np.dtype(ml_dtypes.bfloat16))]
    values = {"a": np.arange(6.0).reshape(2, 3), "b": [1.5, -2.0, 3.0, 0.25]}
    # a tensor larger than the limit opens no empty shard before it
    assert [[t.name for t in shard] for shard in plan_shards(plans, 8)] == [["a"], ["b"]]
    (tmp_path / "ok").mkdir()
    stale = tmp_path / "ok" / ".model-00003-of-00005.safetensors.partial"  # left by a killed save
    stale.write_bytes(b"partial")
    write_checkpoint(tmp_path / "ok", plans, lambda t: values[t.name], max_shard_bytes=24)
    assert not stale.exists()
    first = (tmp_path / "ok" / "model-00001-of-00002.safetensors").read_bytes()
    header = json.loads(first[8:8 + int.from_bytes(first[:8], "little")])
    assert header["__metadata__"] == {"format": "pt"}  # as torch's save_file writes it
    index = json.loads((tmp_path / "ok" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 24 + 8
    with SafetensorsReader(tmp_path / "ok") as reader:
        np.testing.assert_array_equal(reader.read("a"), np.arange(6, dtype=np.float32).reshape(2, 3))
        b = reader.read("b")
        assert b.dtype == ml_dtypes.bfloat16 and b.astype(np.float32).tolist() == values["b"]
    with pytest.raises(ValueError, match=r"a: produced shape \(3, 2\), planned \(2, 3\)"):
        write_checkpoint(tmp_path / "bad", plans[:1], lambda t: np.zeros((3, 2), np.float32))
    produced = []
    assert write_checkpoint(tmp_path / "elsewhere", plans, lambda t: produced.append(t.name), write=False) == []
    assert produced == ["a", "b"] and not (tmp_path / "elsewhere").exists()


def test_an_index_without_a_weight_map_object_and_an_unloadable_dtype_are_user_errors(tmp_path):
    save_file({"a": np.zeros(3, np.float32), "u": np.zeros(3, np.uint16)}, str(tmp_path / "shard.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": ["a", "shard.safetensors"]}))
    with pytest.raises(UserError, match="not a valid safetensors index"):
        SafetensorsReader(tmp_path)
    index.write_text(json.dumps({"weight_map": {"a": "shard.safetensors", "u": "shard.safetensors"}}))
    with SafetensorsReader(tmp_path) as reader:
        assert reader.read("a").tolist() == [0, 0, 0]
        with pytest.raises(UserError, match="tensor u has dtype U16, which azr-jax cannot load"):
            reader.read("u")
