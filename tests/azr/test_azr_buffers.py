"""Task buffers: seeding, de-duplication, cap/eviction, seeded sampling rules, JSON state."""

import json
from collections import Counter

import numpy as np
import pytest

from azr_jax.azr.buffers import TaskBuffer, TaskBuffers, dedup_key, identity_induction, identity_triplet, load_seed_file
from azr_jax.config import AZRSection
from azr_jax.errors import UserError


def triplet(i, program="def f(a):\n    return a + {i}"):
    return {"program": program.format(i=i), "input": str(i), "output": str(2 * i), "imports": []}


def filled(n, cap=100, eviction="drop_oldest", step_of=lambda i: 0):
    buf = TaskBuffer("deduction", cap=cap, eviction=eviction)
    for i in range(n):
        assert buf.add(triplet(i), step=step_of(i))
    return buf


def test_seeded_with_identity_in_both_io_buffers():
    bufs = TaskBuffers.seeded(AZRSection())
    assert bufs.sizes() == {"deduction": 1, "abduction": 1, "induction": 1}
    assert bufs["deduction"].entries[0] == {**identity_triplet(), "step": 0}
    assert bufs["abduction"].entries[0]["program"] == "def f(a):\n    return a"
    ind = bufs["induction"].entries[0]
    assert ind["visible"] == 3 and len(ind["inputs"]) == 6 == len(ind["outputs"])
    assert ind == {**identity_induction(), "step": 0}


def test_dedup_ignores_comments_layout_and_quote_style():
    buf = TaskBuffer("abduction")
    assert buf.add({"program": "def f(a):\n    return a", "input": "'x'", "output": "'x'", "imports": []}, step=1)
    same = {"program": "def f(a):  # identity\n\n    return (a)", "input": '"x"', "output": "'x'", "imports": []}
    assert dedup_key(same) == dedup_key(buf.entries[0])
    assert not buf.add(same, step=2)
    assert buf.add({**same, "input": "'y'"}, step=2)
    assert [e["step"] for e in buf.entries] == [1, 2]
    # a comment after the input (the proposer's input block keeps it) is not a new task either
    for commented in ("'x'  # the input", "'x'  # another comment", "(\n'x'\n)"):
        assert dedup_key({**same, "input": commented}) == dedup_key(buf.entries[0]), commented
        assert not buf.add({**same, "input": commented}, step=3)
    induction = {"program": "def f(a):\n    return a", "inputs": ["1  # one", "2"], "outputs": ["1", "2"]}
    assert dedup_key(induction) == dedup_key({**induction, "inputs": ["1", "2"]})


def test_cap_drop_oldest_and_keep_oldest():
    drop = filled(5, cap=3)
    assert [e["input"] for e in drop.entries] == ["2", "3", "4"]
    assert drop.add(triplet(0), step=9)  # an evicted task may come back
    keep = filled(3, cap=3, eviction="keep_oldest")
    assert not keep.add(triplet(7), step=1)
    assert [e["input"] for e in keep.entries] == ["0", "1", "2"]


def test_references_uniform_without_replacement_and_seeded():
    buf = filled(10)
    refs = buf.sample_references(6, np.random.default_rng(0))
    assert len(refs) == 6 and len({r["input"] for r in refs}) == 6
    assert refs == buf.sample_references(6, np.random.default_rng(0))
    assert len(filled(4).sample_references(6, np.random.default_rng(0))) == 4
    for seed in range(20):  # all of them: each entry once, whatever the draw
        assert sorted(r["input"] for r in buf.sample_references(10, np.random.default_rng(seed))) == sorted(str(i) for i in range(10))
    assert TaskBuffer("deduction").sample_references(6, np.random.default_rng(0)) == []
    # uniform: over many draws every entry is picked about equally often
    counts = Counter(r["input"] for s in range(2000) for r in buf.sample_references(3, np.random.default_rng(s)))
    assert set(counts) == {str(i) for i in range(10)}
    assert max(counts.values()) / min(counts.values()) < 1.3


def test_solver_tasks_max_new_puts_newest_first_then_fills():
    buf = filled(20, step_of=lambda i: 3 if i >= 17 else 1)  # entries 17..19 were added at step 3
    tasks = buf.sample_solver_tasks(8, np.random.default_rng(1), new_since_step=3)
    assert len(tasks) == 8
    assert sorted(t["input"] for t in tasks[:3]) == ["17", "18", "19"]  # all new ones, first
    assert all(t in buf.entries for t in tasks[3:])
    few = buf.sample_solver_tasks(2, np.random.default_rng(1), new_since_step=3)
    assert {t["input"] for t in few} <= {"17", "18", "19"} and len({t["input"] for t in few}) == 2
    none_new = buf.sample_solver_tasks(5, np.random.default_rng(1), new_since_step=99)
    assert len(none_new) == 5
    # the fill is distinct (the reference's random.sample), on every seed
    for seed in range(50):
        fill = buf.sample_solver_tasks(20, np.random.default_rng(seed), new_since_step=99)
        assert len({t["input"] for t in fill}) == 20
    assert len(buf.sample_solver_tasks(30, np.random.default_rng(0), new_since_step=99)) == 30  # more than the buffer
    uniform = buf.sample_solver_tasks(20, np.random.default_rng(1), new_since_step=3, mix="uniform")
    assert len({t["input"] for t in uniform}) == 20  # without replacement while the buffer is big enough


def test_induction_program_pool_draws_from_both_io_buffers():
    bufs = TaskBuffers.seeded(AZRSection())
    bufs["abduction"].add(triplet(5), step=1)
    picked = bufs.sample_induction_programs(400, np.random.default_rng(0))
    counts = Counter(p["program"] for p in picked)
    # identity is in both buffers (2 of 3 pool entries), the new program in one
    assert set(counts) == {"def f(a):\n    return a", "def f(a):\n    return a + 5"}
    assert 0.55 < counts["def f(a):\n    return a"] / 400 < 0.78


def test_state_round_trip_is_plain_json():
    bufs = TaskBuffers.seeded(AZRSection(buffer_cap=5))
    bufs["deduction"].add(triplet(1), step=4)
    state = json.loads(json.dumps(bufs.to_state()))
    again = TaskBuffers.from_state(state)
    assert again.to_state() == bufs.to_state()
    assert not again["deduction"].add(triplet(1), step=5)  # de-duplication survives the round trip
    assert again["deduction"].cap == 5


def test_seed_file_loading(tmp_path):
    p = tmp_path / "seed.jsonl"
    rows = [
        {"snippet": "def f(a):\n    return a", "input": "1", "output": "1", "imports": []},
        {"program": "def f(a):\n    return a * 2", "input": "2", "output": ""},  # reference hole: skipped
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = load_seed_file(p, "deduction")
    assert loaded == [{"program": "def f(a):\n    return a", "input": "1", "output": "1", "imports": []}]
    cfg = AZRSection(seed_file=str(p))
    assert TaskBuffers.seeded(cfg).sizes()["deduction"] == 1
    p.write_text('{"program": "x", "input": "1"}\n')
    with pytest.raises(UserError, match="line 1: missing field"):
        load_seed_file(p, "deduction")
    p.write_text('{"program": 5, "input": "1", "output": "1"}\n')
    with pytest.raises(UserError, match="line 1: 'program' must be a string, got int"):
        load_seed_file(p, "deduction")
    p.write_text("not json\n")
    with pytest.raises(UserError, match="line 1: not valid JSON"):
        load_seed_file(p, "deduction")
    with pytest.raises(UserError, match="not found"):
        load_seed_file(tmp_path / "missing.jsonl", "induction")
    for text in ("", json.dumps(rows[1]) + "\n"):  # empty, or only empty golds: an error, not empty buffers
        p.write_text(text)
        with pytest.raises(UserError, match="no usable deduction seed"):
            load_seed_file(p, "deduction")


def test_seed_tasks_nothing_could_solve_or_build_on_are_skipped_with_one_warning(tmp_path, caplog):
    """The reference's seed files hold golds cut to 403 characters and reprs such as Counter(...)
    that no answer matches here, and programs this project's AST policy refuses (every
    induction proposal on them would be invalid): they stay out of the buffers, counted."""
    import logging

    good = {"snippet": "def f(a):\n    return a", "input": "1", "output": "1"}
    cut = str(list(range(300)))
    rows = [good,
            dict(good, input="2", output="Counter({'a': 2})"),
            dict(good, input="3", output=cut[:200] + "..." + cut[-200:]),
            dict(good, input="4", snippet="import os\ndef f(a):\n    return os.path.join(a, 'x')", output="'4/x'"),
            dict(good, input="5", snippet="def f(a):\n    return a +", output="5"),
            dict(good, input="'6", output="'6'")]  # an input that is not Python
    p = tmp_path / "seed.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="azr_jax.azr.buffers"):
        bufs = TaskBuffers.seeded(AZRSection(seed_file=str(p)))
    assert bufs.sizes()["deduction"] == bufs.sizes()["abduction"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"seed file {p}: skipped 5 task(s) no answer could solve or build on: 2 with a gold output that is not a "
        "plain literal, 1 with a program that does not parse, 1 with a program the AST policy refuses, "
        "1 with an input that is not a Python argument list"]
    assert len(load_seed_file(p, "deduction")) == 3  # without a banned list, programs are not checked
    induction = {"program": "def f(a):\n    return a", "inputs": ["1", "2"], "outputs": ["1", "Counter()"],
                 "message": "m"}
    p.write_text(json.dumps(induction) + "\n" + json.dumps(dict(induction, outputs=["1", "2"])) + "\n")
    assert [r["outputs"] for r in load_seed_file(p, "induction", ["os"])] == [["1", "2"]]
    # every induction answer failed with input_syntax_error on a hidden input like this one
    p.write_text(json.dumps(dict(induction, inputs=["1", "[2"], outputs=["1", "[2]"])) + "\n"
                 + json.dumps(dict(induction, outputs=["1", "2"])) + "\n")
    assert [r["inputs"] for r in load_seed_file(p, "induction")] == [["1", "2"]]


def test_an_induction_seed_without_pairs_is_refused(tmp_path):
    """The scorer refuses a task with no pairs; loaded, it crashed the first step that drew it."""
    p = tmp_path / "seed.jsonl"
    p.write_text(json.dumps({"program": "def f(a):\n    return a", "inputs": [], "outputs": [], "message": "m"}) + "\n")
    with pytest.raises(UserError, match="line 1: an induction seed needs at least one input/output pair"):
        load_seed_file(p, "induction")


def test_solver_tasks_lag_one_step_unless_told_not_to():
    """With azr.solver_task_lag (the reference) "new" means added in the previous step; without
    it, added in this step. Only task_sampler decides which."""
    from azr_jax.train_setup import task_sampler

    buf = filled(0)
    bufs = TaskBuffers({"deduction": buf, "abduction": filled(0), "induction": TaskBuffer("induction")})
    for i in range(20):
        buf.add(triplet(i), step=0)  # old tasks
    buf.add(triplet(100), step=4)  # added in step 4 (the previous step)
    buf.add(triplet(200), step=5)  # added in step 5 (this step, before the solver batch is built)
    for lag, expected_new in ((True, {"100"}), (False, {"200"})):
        cfg = AZRSection(batch_size=4, solver_task_lag=lag, pred_data_mix="max_new")
        pick = task_sampler(bufs, "solve", "deduction", cfg, step=5, seed=0)
        chosen = [pick(i, None)["problem"]["input"] for i in range(4)]
        assert set(chosen[:len(expected_new)]) == expected_new, (lag, chosen)  # new tasks first, then a fill


def test_empty_buffers_are_one_line_for_every_stream():
    """The solver stream said so already; the induction proposer's stream raised IndexError."""
    from azr_jax.errors import UserError
    from azr_jax.train_setup import task_sampler

    empty = TaskBuffers({task: TaskBuffer(task) for task in ("deduction", "abduction", "induction")})
    cfg = AZRSection(batch_size=4)
    with pytest.raises(UserError, match="deduction and abduction buffers are empty"):
        task_sampler(empty, "propose", "induction", cfg, step=1, seed=0)
    with pytest.raises(UserError, match="the induction buffer is empty"):
        task_sampler(empty, "solve", "induction", cfg, step=1, seed=0)
    # one of the two pools is enough for the induction proposers
    one = TaskBuffers({"deduction": filled(1), "abduction": TaskBuffer("abduction"),
                       "induction": TaskBuffer("induction")})
    pick = task_sampler(one, "propose", "induction", cfg, step=1, seed=0)
    assert pick(0, np.random.default_rng(0))["program"]["program"] == one["deduction"].entries[0]["program"]


@pytest.mark.parametrize("field, value, message", [
    ("inputs", "12", "'inputs' must be a list"),  # a string would be read as its characters
    ("outputs", 5, "'outputs' must be a list"),
    ("imports", "import math", "'imports' must be a list of import lines"),
    ("imports", [1], "'imports' must be a list of import lines"),
    ("visible", "two", "'visible' must be an int in"),
    ("visible", 3, "'visible' must be an int in"),
    ("visible", True, "'visible' must be an int in"),
    ("message", None, "'message' must be the description"),  # was shown to the solver as "None"
])
def test_induction_seed_fields_of_the_wrong_type_are_one_line(tmp_path, field, value, message):
    good = {"program": "def f(a):\n    return a", "inputs": ["1", "2"], "outputs": ["1", "2"],
            "message": "identity", "visible": 1, "imports": []}
    p = tmp_path / "seed.jsonl"
    p.write_text(json.dumps(good) + "\n")
    assert load_seed_file(p, "induction")[0]["visible"] == 1
    p.write_text(json.dumps(dict(good, **{field: value})) + "\n")
    with pytest.raises(UserError, match=f"line 1: {message}"):
        load_seed_file(p, "induction")


def _at_depth(frames, fn):
    return fn() if frames == 0 else _at_depth(frames - 1, fn)


def test_a_restored_buffer_rejects_and_evicts_what_the_live_one_would_at_any_call_depth():
    """A program near the recursion limit normalises one way in a shallow stack and another in a
    deep one (the step adds tasks deep in the trainer, a resume rebuilds buffers near the top):
    the restored buffer uses the keys computed when the entries were added."""
    from azr_jax.azr.buffers import dedup_key

    def program(terms):
        return {"program": "def f(a):\n    return " + "+".join(["a"] * terms), "input": "1", "output": "2"}

    depth_dependent = [t for t in range(150, 450, 10)
                       if dedup_key(program(t)) != _at_depth(300, lambda t=t: dedup_key(program(t)))]
    assert depth_dependent, "no program size normalises differently 300 frames deeper on this Python"
    task = program(depth_dependent[0])

    live = TaskBuffers.seeded(AZRSection(buffer_cap=2))
    assert _at_depth(300, lambda: live["deduction"].add(task, step=1))
    restored = TaskBuffers.from_state(json.loads(json.dumps(live.to_state())))  # rebuilt near the top
    for bufs in (live, restored):
        assert not _at_depth(300, lambda: bufs["deduction"].add(task, step=2))  # a duplicate for both
        assert bufs["deduction"].add(triplet(7), step=2)  # evicts the seed
        assert bufs["deduction"].add(triplet(8), step=3)  # evicts `task`: its key goes with it
        assert _at_depth(300, lambda: bufs["deduction"].add(task, step=4))
    assert live.to_state() == restored.to_state()
    # The audit files leave the keys out.
    assert set(live.to_state(keys=False)["deduction"]) == {"task", "cap", "eviction", "entries"}


def test_induction_tasks_that_share_only_some_inputs_are_not_duplicates():
    buf = TaskBuffer("induction")
    task = {"program": "def f(a):\n    return a", "inputs": ["1", "2"], "outputs": ["1", "2"], "message": "m"}
    assert buf.add(task, step=0)
    assert buf.add(dict(task, inputs=["1", "3"], outputs=["1", "3"]), step=0)
    assert not buf.add(dict(task, inputs=["1", "3"], outputs=["1", "3"]), step=1)  # an exact repeat
    assert len(buf) == 2


def test_induction_seed_pairs_are_checked(tmp_path, caplog):
    p = tmp_path / "seed.jsonl"
    row = {"program": "def f(a):\n    return a", "inputs": ["1", "2"], "outputs": ["1", "2"], "message": "m"}
    p.write_text(json.dumps(row) + "\n" + json.dumps(dict(row, inputs=["3", "4"], outputs=["3", ""])) + "\n")
    assert [t["inputs"] for t in load_seed_file(p, "induction")] == [["1", "2"]]  # one empty gold: skipped
    assert "1 with an empty gold output" in caplog.text
    p.write_text(json.dumps(dict(row, outputs=["1"])) + "\n")
    with pytest.raises(UserError, match="2 inputs but 1 outputs"):
        load_seed_file(p, "induction")
    p.write_text(json.dumps(dict(row, visible=2)) + "\n")  # every pair shown is allowed
    assert load_seed_file(p, "induction")[0]["visible"] == 2


def test_a_solver_stream_wraps_around_and_a_proposer_gets_n_references():
    """A prompt skipped for length is replaced by a repeat of the first chosen tasks (the stream
    wraps around them); deduction/abduction proposers see azr.n_references references."""
    from azr_jax.train_setup import task_sampler

    bufs = TaskBuffers({"deduction": filled(3), "abduction": filled(3), "induction": TaskBuffer("induction")})
    cfg = AZRSection(batch_size=2, n_references=2)
    pick = task_sampler(bufs, "solve", "deduction", cfg, step=1, seed=0)
    chosen = [pick(i, None)["problem"]["input"] for i in range(5)]
    assert chosen[0] != chosen[1] and chosen[2:] == chosen[:2] + chosen[:1]
    propose = task_sampler(bufs, "propose", "abduction", cfg, step=1, seed=0)
    assert len(propose(0, np.random.default_rng(0))["references"]) == 2  # of 3 in the buffer


def test_the_new_tasks_taken_are_drawn_uniformly_when_there_are_more_than_asked_for():
    buf = filled(20, step_of=lambda i: 3 if i >= 10 else 1)  # entries 10..19 are new
    picks = [buf.sample_solver_tasks(3, np.random.default_rng(s), new_since_step=3) for s in range(200)]
    assert all(len({t["input"] for t in p}) == 3 and all(int(t["input"]) >= 10 for t in p) for p in picks)
    counts = Counter(t["input"] for p in picks for t in p)
    assert set(counts) == {str(i) for i in range(10, 20)}  # not always the oldest new ones
    assert max(counts.values()) / min(counts.values()) < 1.6


def test_an_induction_task_with_its_inputs_in_another_order_is_a_new_task():
    # the order decides which pairs the solver is shown and which are checked
    buf = TaskBuffer("induction")
    task = {"program": "def f(a):\n    return a", "inputs": ["1", "2"], "outputs": ["1", "2"], "message": "m", "visible": 1}
    assert buf.add(task, step=0)
    assert buf.add(dict(task, inputs=["2", "1"], outputs=["2", "1"]), step=0)


def test_induction_programs_are_drawn_with_replacement():
    bufs = TaskBuffers({t: TaskBuffer(t) for t in ("deduction", "abduction", "induction")})
    for i in range(3):
        bufs["deduction"].add(triplet(i), step=0)
    draws = [bufs.sample_induction_programs(2, np.random.default_rng(s)) for s in range(60)]
    repeats = sum(a["program"] == b["program"] for a, b in draws)
    assert 8 <= repeats <= 35  # each draw independent: a repeat in about 1 of 3 pairs
    assert len(bufs.sample_induction_programs(5, np.random.default_rng(0))) == 5  # more than the pool


def test_an_added_entry_carries_the_step_it_was_added_at_even_if_it_had_one():
    buf = TaskBuffer("deduction")
    assert buf.add({**triplet(1), "step": 0}, step=5)  # e.g. a task taken from another buffer's entries
    assert buf.entries[0]["step"] == 5
    assert buf.sample_solver_tasks(1, np.random.default_rng(0), new_since_step=5) == [buf.entries[0]]


def test_a_seed_row_with_both_names_uses_program_and_values_become_texts(tmp_path):
    p = tmp_path / "seed.jsonl"
    row = {"program": "def f(a):\n    return a", "snippet": "def f(a):\n    return -a", "input": 3, "output": 3}
    p.write_text(json.dumps(row) + "\n")
    assert load_seed_file(p, "deduction") == [{"program": "def f(a):\n    return a", "input": "3", "output": "3", "imports": []}]


def test_keys_that_do_not_fit_the_entries_are_recomputed():
    entry = {**triplet(1), "step": 0}
    buf = TaskBuffer("deduction", entries=[entry], keys=[])  # e.g. a hand-edited state
    assert buf.keys == [dedup_key(entry)]
    assert not buf.add(triplet(1), step=1)


def test_an_induction_seed_without_a_visible_count_shows_half_its_pairs(tmp_path):
    p = tmp_path / "seed.jsonl"
    row = {"program": "def f(a):\n    return a", "inputs": [1, 2, 3, 4, 5], "outputs": [1, 2, 3, 4, 5], "message": 7}
    p.write_text(json.dumps(row) + "\n")
    assert load_seed_file(p, "induction") == [{"program": "def f(a):\n    return a", "inputs": ["1", "2", "3", "4", "5"],
                                               "outputs": ["1", "2", "3", "4", "5"], "message": "7", "visible": 2,
                                               "imports": []}]


def test_each_seed_triplet_goes_whole_into_both_io_buffers(tmp_path):
    p = tmp_path / "seed.jsonl"
    rows = [{"program": "def f(a):\n    return a + 1", "input": "1", "output": "2"},
            {"program": "def f(a):\n    return a * 3", "input": "2", "output": "6", "imports": ["import os"]}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    bufs = TaskBuffers.seeded(AZRSection(seed_file=str(p)))
    expected = [{**r, "imports": r.get("imports", []), "step": 0} for r in rows]
    assert bufs["deduction"].entries == expected and bufs["abduction"].entries == expected


def test_text_that_does_not_parse_is_keyed_without_its_layout():
    broken = {"program": "def f(a:\n    return a", "input": "1"}
    assert dedup_key(broken) == dedup_key({**broken, "program": "def  f(a:\n  return  a\n"})
    assert dedup_key(broken) != dedup_key({**broken, "program": "def f(b:\n    return b"})


def test_the_seeded_buffers_take_the_configured_eviction_and_refuse_banned_induction_seeds(tmp_path):
    p = tmp_path / "induction.jsonl"
    ok = {"program": "def f(a):\n    return a", "inputs": ["1", "2"], "outputs": ["1", "2"], "message": "m"}
    banned = dict(ok, program="import os\ndef f(a):\n    return os.path.join(a, 'x')", inputs=["'a'", "'b'"],
                  outputs=["'a/x'", "'b/x'"])
    p.write_text(json.dumps(ok) + "\n" + json.dumps(banned) + "\n")
    bufs = TaskBuffers.seeded(AZRSection(induction_seed_file=str(p), buffer_cap=3, buffer_eviction="keep_oldest"))
    assert [e["program"] for e in bufs["induction"].entries] == [ok["program"]]
    assert {b.eviction for b in bufs.buffers.values()} == {"keep_oldest"}
    # and a restored buffer keeps it
    again = TaskBuffers.from_state(json.loads(json.dumps(bufs.to_state())))
    assert again["deduction"].eviction == "keep_oldest" and again["deduction"].cap == 3


def test_unknown_task_types_eviction_rules_and_solver_mixes_are_refused():
    with pytest.raises(ValueError, match="unknown task type"):
        TaskBuffer("translation")
    with pytest.raises(ValueError, match="unknown eviction rule"):
        TaskBuffer("deduction", eviction="drop_newest")
    with pytest.raises(ValueError, match="unknown solver-task mix"):
        filled(3).sample_solver_tasks(2, np.random.default_rng(0), new_since_step=0, mix="newest")
