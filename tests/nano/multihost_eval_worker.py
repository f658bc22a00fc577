"""One process of the two-process evaluation-scoring test (run by test_eval_multihost.py, not by pytest).

usage: python multihost_eval_worker.py PORT PROCESS_ID OUT_JSON   (PORT "single": one process alone)
Scores answers to 2 held-out items per task type with `score_items` and writes the result plus
how many checks (program runs and output comparisons) this process's own sandbox did.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if port != "single":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)

from azr_jax.config import load_config  # noqa: E402
from azr_jax.eval.evaluate import score_items  # noqa: E402
from azr_jax.nano.benchmark import nano_benchmark  # noqa: E402
from azr_jax.sandbox import Sandbox  # noqa: E402


class CountingSandbox:
    def __init__(self, sb):
        self.sb, self.checks = sb, 0

    def run(self, jobs):
        self.checks += len(jobs)
        return self.sb.run(jobs)

    def compare(self, pairs):
        self.checks += len(pairs)
        return self.sb.compare(pairs)


def right(item):
    p = item["problem"]
    tag, key = {"deduction": ("output", "output"), "abduction": ("input", "input"),
                "induction": ("python", "program")}[item["task"]]
    text = p[key]
    return f" reasoning </think> <answer>\n```{tag}\n{text}\n```\n</answer>"


cfg = load_config("configs/nano.py")
items = nano_benchmark(2)
responses = [right(it) for it in items]
responses[0] = " <answer>\n```output\n'not it'\n```\n</answer>"  # one wrong answer, item 0
with Sandbox(cfg.sandbox) as sb:
    counting = CountingSandbox(sb)
    result = score_items(items, responses, cfg, counting)
with open(out, "w") as f:
    json.dump({"result": result, "checks": counting.checks}, f, sort_keys=True)
print(f"process {pid}: ok", flush=True)
