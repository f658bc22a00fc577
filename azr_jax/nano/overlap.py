"""How much the held-out nano benchmark shares with the pretraining corpus in behaviour.

The held-out split is by program text (`corpus.is_heldout`): no benchmark program's text is in
the corpus, the seed files or the training slice of the generator (tests/nano/test_heldout.py).
Different texts can compute the same function, though (`n = n // 3` and `n = n // 3; n = n % 5;
n = n % 5` agree on every int input the generator draws, 0..9), so text disjointness does not
make the benchmark's behaviours unseen. This measures what is left:

    python -m azr_jax.nano.overlap        # one JSON object

- `equivalent_programs`: benchmark programs that compute the same outputs as some corpus program
  on the generator's whole input domain (every int, every word, every list it can draw),
  in all and per input type;
- `induction_items_fit_by_corpus`: induction items whose 8 input/output pairs some corpus
  program reproduces (that corpus text would score 1 as the answer);
- `items_seen_as_pairs`: deduction / abduction items for which an equivalent corpus program was
  shown on the same input (the same input -> output pair was in pretraining);
- `items_seen_in_traces`: items whose program is equivalent to the first steps of a longer corpus
  program whose deduction/abduction trace (the value after every step, on the task's own
  input) shows the pair on the same input, and `items_seen_either`: items counted by either.

The generator code runs here (the steps' own Python callables), never model-written text.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

from azr_jax.nano.benchmark import BENCHMARK_DIFFICULTY, BENCHMARK_SEED, DEFAULT_PER_TYPE, NUM_INPUTS, TASK_TYPES
from azr_jax.nano.corpus import WORDS, Difficulty, Program, generate_tasks


def input_domain(d: Difficulty) -> dict[str, list]:
    """Every input the generator can draw, by type."""
    digits = range(d.max_list_item + 1)
    lists = [list(c) for n in range(1, d.max_list_len + 1) for c in itertools.product(digits, repeat=n)]
    return {"int": list(range(d.max_int_input + 1)), "str": list(WORDS), "list": lists}


def behaviour(program: Program, inputs: list) -> tuple:
    """The program's output text (or exception type) on each input."""
    out = []
    for value in inputs:
        try:
            out.append(repr(program.run(value)))
        except Exception as e:  # noqa: BLE001 - a generator program that fails is part of its behaviour
            out.append("raises " + type(e).__name__)
    return tuple(out)


def behaviour_overlap(corpus: list, per_type: int = DEFAULT_PER_TYPE) -> dict:
    """The overlap figures of the module docstring for `corpus` (GeneratedTasks) against the
    first `per_type` benchmark items of each task type."""
    domain = input_domain(BENCHMARK_DIFFICULTY)
    by_behaviour: dict[tuple, list] = defaultdict(list)  # (type, outputs) -> corpus tasks
    key_of: dict[str, tuple] = {}  # one behaviour per program text; every task keeps its inputs
    for task in corpus:
        prog = task.program
        if task.source not in key_of:
            key_of[task.source] = (prog.in_type, behaviour(prog, domain[prog.in_type]))
        by_behaviour[key_of[task.source]].append(task)
    bench = {task: generate_tasks(BENCHMARK_SEED + i, per_type, BENCHMARK_DIFFICULTY, heldout=True, num_inputs=NUM_INPUTS)
             for i, task in enumerate(TASK_TYPES)}

    def twins(prog: Program) -> list:
        return by_behaviour.get((prog.in_type, behaviour(prog, domain[prog.in_type])), [])

    programs = {g.source: g.program for gens in bench.values() for g in gens}
    equivalent = {t: [0, 0] for t in domain}  # input type -> [equivalent, all]
    for prog in programs.values():
        equivalent[prog.in_type][0] += bool(twins(prog))
        equivalent[prog.in_type][1] += 1
    # The induction inputs lie in the domain: read their outputs off the behaviours computed above.
    position = {t: {repr(v): i for i, v in enumerate(values)} for t, values in domain.items()}

    def fits(g) -> bool:
        where = [position[g.program.in_type][repr(v)] for v in g.induction_inputs]
        want = tuple(repr(g.program.run(v)) for v in g.induction_inputs)
        return any(tuple(outputs[i] for i in where) == want
                   for in_type, outputs in by_behaviour if in_type == g.program.in_type)

    fit = sum(fits(g) for g in bench["induction"])
    # Pairs shown with their output in pretraining: the task's own input (solver and reference
    # records) and the visible half of its induction inputs (the hidden half appears only as
    # inputs in proposer responses).
    def seen_whole(g) -> bool:
        return any(repr(g.input_value) in {repr(v) for v in (t.input_value, *t.induction_inputs[: NUM_INPUTS // 2])}
                   for t in twins(g.program))

    # A solver trace prints the value after each step, so the first k steps of a corpus program
    # are shown as a program of their own, on that task's input.
    traced: dict[tuple, set] = defaultdict(set)  # (type, outputs) of a strict prefix -> inputs shown
    for task in corpus:
        for k in range(1, len(task.program.steps)):
            prefix = Program(task.program.steps[:k])
            traced[(prefix.in_type, behaviour(prefix, domain[prefix.in_type]))].add(repr(task.input_value))

    def seen_traced(g) -> bool:
        key = (g.program.in_type, behaviour(g.program, domain[g.program.in_type]))
        return repr(g.input_value) in traced.get(key, ())

    seen, in_traces, either = {}, {}, {}
    for task in ("deduction", "abduction"):
        whole = [seen_whole(g) for g in bench[task]]
        traces = [seen_traced(g) for g in bench[task]]
        seen[task], in_traces[task] = sum(whole), sum(traces)
        either[task] = sum(a or b for a, b in zip(whole, traces))
    return {
        "benchmark_items": per_type * len(TASK_TYPES),
        "benchmark_programs": len(programs),
        "corpus_programs": len({t.source for t in corpus}),
        "equivalent_programs": sum(n for n, _ in equivalent.values()),
        "equivalent_programs_by_input_type": {t: f"{n}/{total}" for t, (n, total) in equivalent.items()},
        "induction_items_fit_by_corpus": f"{fit}/{len(bench['induction'])}",
        "items_seen_as_pairs": {t: f"{n}/{len(bench[t])}" for t, n in seen.items()},
        "items_seen_in_traces": {t: f"{n}/{len(bench[t])}" for t, n in in_traces.items()},
        "items_seen_either": {t: f"{n}/{len(bench[t])}" for t, n in either.items()},
    }


def main() -> None:
    from azr_jax.nano.pretrain import corpus_tasks
    from azr_jax.nano.run_config import nano_base_config

    print(json.dumps(behaviour_overlap(corpus_tasks(nano_base_config())), sort_keys=True))


if __name__ == "__main__":
    main()
