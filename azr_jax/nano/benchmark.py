"""The held-out nano benchmark: solver tasks from the generator's held-out slice of program space.

Items come from `BENCHMARK_SEED` (never used for the pretraining corpus, seeds 0.., or the
self-play seed files, corpus seed + 1) and only from programs whose source hash falls in the
held-out slice (`corpus.is_heldout`), which the pretraining corpus and the seed buffers exclude
by construction (by text: `azr_jax.nano.overlap` counts the benchmark programs that compute
the same function as a corpus program). The benchmark is fixed: it does not depend on any
training setting.
Plain Python, no JAX.
"""

from __future__ import annotations

from azr_jax.nano.corpus import Difficulty, generate_tasks

BENCHMARK_SEED = 1_000_003
TASK_TYPES = ("deduction", "abduction", "induction")
BENCHMARK_DIFFICULTY = Difficulty(max_steps=3)
DEFAULT_PER_TYPE = 50
NUM_INPUTS = 8  # induction pairs per item (first half visible), as in the nano self-play config


def nano_benchmark(per_type: int = DEFAULT_PER_TYPE) -> list[dict]:
    """`per_type` items of each task type: {"id", "task", "problem"} (problem = DESIGN §3.3 record).

    Each item is one draw from the held-out slice of the generator, which repeats itself: of the
    default 150 items, 4 repeat another item exactly (2 deduction, 2 abduction) and there are 94
    distinct programs. A larger `per_type` extends the list (same first items).
    """
    items = []
    for t_index, task in enumerate(TASK_TYPES):
        gens = generate_tasks(BENCHMARK_SEED + t_index, per_type, BENCHMARK_DIFFICULTY, heldout=True,
                              num_inputs=NUM_INPUTS)
        for i, gen in enumerate(gens):
            problem = gen.induction_record(NUM_INPUTS // 2) if task == "induction" else gen.io_record()
            items.append({"id": f"nano/{task}/{i}", "task": task, "problem": problem})
    return items
