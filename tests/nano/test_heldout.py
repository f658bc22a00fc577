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


def test_behaviour_overlap_counts_on_a_hand_made_benchmark(monkeypatch):
    # Each count of `behaviour_overlap` on a benchmark and corpus small enough to count by hand.
    # The benchmark (one item per type) is served by a stand-in for the generator, keyed by seed.
    from azr_jax.nano import overlap
    from azr_jax.nano.benchmark import BENCHMARK_DIFFICULTY, NUM_INPUTS
    from azr_jax.nano.corpus import GeneratedTask, Program, Step

    def step(line, fn, in_type="int", out_type="int"):
        return Step(in_type, out_type, (line,), line, fn)

    def task(steps, value, inputs=()):
        return GeneratedTask(Program(tuple(steps)), value, tuple(inputs))

    inc = step("n = n + 1", lambda n: n + 1)
    max0 = step("n = max(xs + [0])", lambda xs: max(xs + [0]), "list")
    mod9 = step("n = n % 9", lambda n: n % 9)
    bench = [[task([inc], 2, range(8))],  # deduction: 2 -> 3
             [task([max0], [3, 1], [[i] for i in range(8)])],  # abduction: [3, 1] -> 3
             [task([mod9], 0, range(8))]]  # induction: 0..7 -> 0..7 (n % 9 differs from n only at 9)

    def benchmark_tasks(seed, count, d, *, heldout, num_inputs):
        assert (d, heldout, num_inputs) == (BENCHMARK_DIFFICULTY, True, NUM_INPUTS)
        return bench[seed - BENCHMARK_SEED][:count]  # seed + 0, 1, 2: deduction, abduction, induction

    monkeypatch.setattr(overlap, "generate_tasks", benchmark_tasks)
    one_plus = step("n = 1 + n", lambda n: 1 + n)  # another text of `inc`
    corpus = [
        # inc's function, shown on inc's input 2 only among the hidden half of its induction inputs
        task([one_plus], None, [None] * 4 + [2] * 4), task([one_plus], None, [None] * 8),  # one text twice
        # max0's function on every list the generator draws (they are never empty), on max0's input
        task([step("n = max(xs)", max, "list")], [3, 1]),
        # inc as the first step of a longer program, traced on input 5, not inc's 2
        task([inc, step("s = str(n)", str, "int", "str")], 5),
        # agrees with the induction item's n % 9 on its 4 visible inputs 0..3, not on 4..7
        task([step("n = n % 4", lambda n: n % 4)], 0),
    ]
    assert overlap.behaviour_overlap(corpus, per_type=1) == {
        "benchmark_items": 3,
        "benchmark_programs": 3,
        "corpus_programs": 4,  # five tasks, four texts
        "equivalent_programs": 2,  # inc (by one_plus) and max0 (by max); not n % 9
        "equivalent_programs_by_input_type": {"int": "1/2", "list": "1/1", "str": "0/0"},
        "induction_items_fit_by_corpus": "0/1",  # no corpus program maps 0..7 to 0..7
        "items_seen_as_pairs": {"deduction": "0/1", "abduction": "1/1"},  # input 2 only hidden; [3, 1] shown
        "items_seen_in_traces": {"deduction": "0/1", "abduction": "0/1"},  # the trace of inc is on 5
        "items_seen_either": {"deduction": "0/1", "abduction": "1/1"},
    }
    # n % 10 is n on every int the generator draws (0..9): it fits the induction item's 8 pairs
    # (and is not n % 9, which maps 9 to 0); the deduction item's n + 1 fits no corpus program.
    # inc's own input, in a trace, is seen there and only there.
    traced = [task([step("n = n % 10", lambda n: n % 10)], None), task([inc, step("s = str(n)", str, "int", "str")], 2)]
    seen = overlap.behaviour_overlap(traced, per_type=1)
    assert seen["induction_items_fit_by_corpus"] == "1/1" and seen["equivalent_programs"] == 0
    assert seen["items_seen_in_traces"] == seen["items_seen_either"] == {"deduction": "1/1", "abduction": "0/1"}
    assert seen["items_seen_as_pairs"] == {"deduction": "0/1", "abduction": "0/1"}


def test_the_benchmark_is_the_one_docs_nano_md_measures():
    # Every solve rate in docs/nano.md, and every run's base and final rates, are on these items:
    # 150 (50 per type, in TASK_TYPES order), 94 distinct programs, 4 exact copies of another item
    # (2 deduction, 2 abduction), induction with the nano self-play config's 8 inputs, 4 visible.
    from azr_jax.nano.benchmark import NUM_INPUTS

    items = nano_benchmark()
    types = ("deduction", "abduction", "induction")
    assert [(it["id"], it["task"]) for it in items] == [(f"nano/{t}/{i}", t) for t in types for i in range(50)]
    assert len({it["problem"]["program"] for it in items}) == 94
    copies = {t: 50 - len({json.dumps(it["problem"], sort_keys=True) for it in items if it["task"] == t})
              for t in types}
    assert copies == {"deduction": 2, "abduction": 2, "induction": 0}
    assert NUM_INPUTS == load_config("configs/nano.py").azr.num_inputs == 8
    induction = [it["problem"] for it in items if it["task"] == "induction"]
    assert all(len(p["inputs"]) == len(p["outputs"]) == 8 and p["visible"] == 4 for p in induction)
    # The first item of each type, as drawn from BENCHMARK_SEED, BENCHMARK_SEED + 1 and + 2.
    assert items[0]["problem"] == {
        "program": "def f(s):\n    xs = [ord(c) % 6 for c in s]\n    xs = [x + 2 for x in xs]\n"
                   "    xs = [x + 3 for x in xs]\n    return xs",
        "input": "'apple'", "output": "[6, 9, 9, 5, 10]", "imports": []}  # ord % 6 of a,p,p,l,e: 1,4,4,0,5; + 5
    assert items[50]["problem"] == {
        "program": "def f(n):\n    xs = list(range(n % 7))\n    s = ''.join(str(x) for x in xs)\n    return s",
        "input": "8", "output": "'0'", "imports": []}  # 8 % 7 = 1: [0] -> '0'
    assert induction[0]["program"] == "def f(n):\n    xs = [n] * 5\n    xs = [x * 4 for x in xs]\n    return xs"
    assert induction[0]["inputs"] == ["0", "9", "1", "4", "2", "7", "8", "3"]


def test_the_overlap_command_measures_the_nano_corpus_against_the_whole_benchmark(monkeypatch, capsys):
    # `python -m azr_jax.nano.overlap` (docs/nano.md's counts): the corpus of configs/nano_base.py
    # against all 150 benchmark items (94 programs), as one JSON line. The corpus and the input
    # domain are cut down here (the whole domain holds 11 110 lists).
    import ast

    from azr_jax.nano import overlap, pretrain
    from azr_jax.nano.corpus import WORDS, generate_tasks
    from azr_jax.nano.run_config import NANO_PRETRAIN

    asked = []

    def corpus_tasks(cfg):
        asked.append(cfg)
        return generate_tasks(0, 120)

    monkeypatch.setattr(pretrain, "corpus_tasks", corpus_tasks)
    # every int and word, and of the lists only the induction items' own inputs (which `fits` looks up)
    lists = [ast.literal_eval(v) for it in nano_benchmark() if it["task"] == "induction"
             for v in it["problem"]["inputs"] if v.startswith("[")]
    monkeypatch.setattr(overlap, "input_domain", lambda d: {"int": list(range(10)), "str": list(WORDS), "list": lists})
    overlap.main()
    (line,) = capsys.readouterr().out.splitlines()
    got = json.loads(line)
    assert [c.pretrain for c in asked] == [NANO_PRETRAIN] and asked[0].name == "nano_base"
    corpus = {t.source for t in generate_tasks(0, 120)}
    assert (got["benchmark_items"], got["benchmark_programs"], got["corpus_programs"]) == (150, 94, len(corpus))
    assert list(got) == sorted(got)
