"""Driver for the buffer-growth test: `train()` with a scripted generator that writes valid
proposals (a random policy almost never does). Everything else is the real loop.

usage: python scripted_run.py WORKDIR TOKENIZER_DIR [KEY=VALUE ...]
With SCRIPTED_LONG_PROGRAMS=1 the proposed programs carry a long string constant, so their
solver prompts are over any small sampling.max_prompt_len. With SCRIPTED_SIGTERM_AT_STEP=N the
process sends itself SIGTERM as step N begins (a preemption during that step).
"""

import os
import signal
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import tiny_overrides  # noqa: E402

from azr_jax.config import load_config  # noqa: E402
from azr_jax.models.tokenizer import load_tokenizer  # noqa: E402
from azr_jax.sampling import Completions  # noqa: E402
from azr_jax.trainer import train  # noqa: E402


def scripted_generate(tokenizer):
    # ~1400 tokens: past the tiny config's max_prompt_len=1024 (more only slowed the update)
    padding = ("    pad = '" + " ".join(str(k) for k in range(400)) + "'\n") if os.environ.get("SCRIPTED_LONG_PROGRAMS") else ""
    def answer(*blocks):
        return " plan </think> <answer>\n" + "\n".join(f"```{t}\n{x}\n```" for t, x in blocks) + "\n</answer>"

    def generate(params, config, prompt_tokens, rng, settings, *, n_samples=1, **_):
        base = int(jax.random.randint(rng, (), 0, 10**6))
        texts = []
        for i, ids in enumerate(prompt_tokens):
            prompt = tokenizer.decode(ids)
            c = base + i  # a different program per prompt and step, so the buffers grow
            if "write a Python program together" in prompt:
                # a comment and a print: the seeding phase must strip them, self-play keeps them
                text = answer(("python", f"def f(a):\n    # shift\n    print(a)\n{padding}    return a + {c}"),
                              ("input", str(i)))
            elif "choose inputs and a hint" in prompt:
                text = answer(*[("input", str(c + j)) for j in range(2)], ("message", "shift"))
            elif "predict the output" in prompt:
                text = answer(("output", "1"))
            elif "find an input" in prompt:
                text = answer(("input", "1"))
            else:
                text = answer(("python", "def f(a):\n    return a"))
            texts += [text] * n_samples
        ids = [tokenizer.encode(t) + [tokenizer.eos_id] for t in texts]
        width = max(len(x) for x in ids)
        tokens = np.zeros((len(ids), width), np.int32)
        for r, x in enumerate(ids):
            tokens[r, : len(x)] = x
        return Completions(tokens=tokens, logprobs=np.zeros(tokens.shape, np.float32),
                           lengths=np.array([len(x) for x in ids], np.int32), finished=np.ones(len(ids), bool))

    return generate


if __name__ == "__main__":
    workdir, tok = sys.argv[1], Path(sys.argv[2])
    cfg = load_config(Path(__file__).parent / "tiny_config.py",
                      tiny_overrides(tok) + ["train.steps=2", "train.eval_every=-1"] + sys.argv[3:])
    if os.environ.get("SCRIPTED_SIGTERM_AT_STEP"):
        from azr_jax import trainer

        stop_at, real_step = int(os.environ["SCRIPTED_SIGTERM_AT_STEP"]), trainer.SelfPlay.step

        def step_with_signal(self, state, step):
            if step == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_step(self, state, step)

        trainer.SelfPlay.step = step_with_signal
    result = train(cfg, workdir, progress=False, generate_fn=scripted_generate(load_tokenizer(cfg.model.tokenizer)))
    print(result)
