"""Held-out nano benchmark tasks never enter training: not the pretraining corpus, not the
self-play seed buffers (by seed and by program hash)."""

import json

from azr_jax.config import load_config
from azr_jax.nano import BASE_DIR
from azr_jax.nano.benchmark import BENCHMARK_SEED, TASK_TYPES, nano_benchmark
from azr_jax.nano.corpus import is_heldout, program_hash
from azr_jax.nano.pretrain import SEED_INDUCTION_FILE, SEED_IO_FILE, corpus_tasks

CONFIG = "configs/nano_base.py"


def _bench_hashes():
    items = nano_benchmark()
    assert {it["task"] for it in items} == set(TASK_TYPES)
    assert all(is_heldout(it["problem"]["program"]) for it in items)
    return {program_hash(it["problem"]["program"]) for it in items}


def test_benchmark_is_disjoint_from_the_pretraining_corpus():
    cfg = load_config(CONFIG)
    bench_seeds = {BENCHMARK_SEED + i for i in range(len(TASK_TYPES))}
    assert not bench_seeds & {cfg.pretrain.corpus_seed, cfg.pretrain.corpus_seed + 1}  # corpus, seed files
    corpus = {program_hash(t.source) for t in corpus_tasks(cfg)}
    assert len(corpus) > 500
    assert not corpus & _bench_hashes()


def test_the_shipped_base_was_trained_on_the_corpus_checked_above(tmp_path):
    """The disjointness test above regenerates the corpus from today's code; it says something
    about the shipped weights only if they were trained on that corpus. The tokenizer is trained
    on every transcript of it, so today's corpus must rebuild the shipped tokenizer byte for
    byte (a change to the generator, the split or the transcripts would show here), and the
    shipped seed files must be the ones today's code writes."""
    from azr_jax.nano.pretrain import corpus_transcripts, write_seed_files
    from azr_jax.nano.tokenizer_train import train_tokenizer

    cfg = load_config(CONFIG)
    texts = [t.prompt + t.response for t in corpus_transcripts(cfg, corpus_tasks(cfg))]
    rebuilt = train_tokenizer(texts, tmp_path / "tokenizer.model", vocab_size=cfg.pretrain.vocab_size)
    assert rebuilt.read_bytes() == (BASE_DIR / "tokenizer.model").read_bytes()
    write_seed_files(cfg, tmp_path)
    for name in (SEED_IO_FILE, SEED_INDUCTION_FILE):
        assert (tmp_path / name).read_bytes() == (BASE_DIR / name).read_bytes(), name


def test_benchmark_is_disjoint_from_the_selfplay_seed_buffers():
    cfg = load_config("configs/nano.py")
    assert cfg.azr.seed_file == str(BASE_DIR / SEED_IO_FILE)
    assert cfg.azr.induction_seed_file == str(BASE_DIR / SEED_INDUCTION_FILE)
    programs = [json.loads(line)["program"] for name in (SEED_IO_FILE, SEED_INDUCTION_FILE)
                for line in (BASE_DIR / name).read_text().splitlines()]
    assert programs and not any(is_heldout(p) for p in programs)
    seeds = {program_hash(p) for p in programs}
    assert not seeds & _bench_hashes()


def test_benchmark_is_fixed_and_prefix_stable():
    a, b = nano_benchmark(10), nano_benchmark(20)
    assert a == nano_benchmark(10)
    for task in TASK_TYPES:
        assert [x for x in a if x["task"] == task] == [x for x in b if x["task"] == task][:10]


def test_behaviour_overlap_counts_what_text_disjointness_leaves():
    # `python -m azr_jax.nano.overlap` measures, against the pretraining corpus, how many benchmark
    # programs compute the same function as a corpus program (docs/nano.md). Its counts are right
    # at both ends: the benchmark's own tasks as the corpus overlap everywhere, no corpus nowhere.
    from azr_jax.nano.benchmark import BENCHMARK_DIFFICULTY, NUM_INPUTS
    from azr_jax.nano.corpus import generate_tasks
    from azr_jax.nano.overlap import behaviour_overlap

    per_type = 4
    itself = [g for i, _ in enumerate(TASK_TYPES)
              for g in generate_tasks(BENCHMARK_SEED + i, per_type, BENCHMARK_DIFFICULTY, heldout=True, num_inputs=NUM_INPUTS)]
    full = behaviour_overlap(itself, per_type)
    assert full["equivalent_programs"] == full["benchmark_programs"] > 0
    assert full["induction_items_fit_by_corpus"] == f"{per_type}/{per_type}"
    assert full["items_seen_as_pairs"] == {"deduction": f"{per_type}/{per_type}", "abduction": f"{per_type}/{per_type}"}
    none = behaviour_overlap([], per_type)
    assert none["equivalent_programs"] == 0 and none["induction_items_fit_by_corpus"] == f"0/{per_type}"
    assert none["items_seen_either"] == {"deduction": f"0/{per_type}", "abduction": f"0/{per_type}"}
    # A benchmark program as the first steps of a longer corpus program: the solver trace of that
    # program prints the benchmark's output after those steps, on the same input.
    from azr_jax.nano.corpus import VAR, GeneratedTask, Program, Step

    def longer(g):
        t = g.program.out_type
        bang = Step(t, "str", (f"s = repr({VAR[t]}) + '!'",), "show it with a bang", lambda v: repr(v) + "!")
        return GeneratedTask(Program(g.program.steps + (bang,)), g.input_value, g.induction_inputs)

    extended = behaviour_overlap([longer(g) for g in itself], per_type)
    whole = {"deduction": f"0/{per_type}", "abduction": f"0/{per_type}"}
    every = {"deduction": f"{per_type}/{per_type}", "abduction": f"{per_type}/{per_type}"}
    assert extended["items_seen_as_pairs"] == whole and extended["equivalent_programs"] == 0
    assert extended["items_seen_in_traces"] == extended["items_seen_either"] == every
