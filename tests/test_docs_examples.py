"""Python examples in the docs run as written."""

import math
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_block_after(doc: Path, heading: str) -> str:
    text = doc.read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {heading!r} in {doc}"
    return match.group(1)


def test_the_rl_minimal_example_runs_and_trains_on_its_56_response_tokens():
    code = python_block_after(ROOT / "docs" / "rl.md", "### Minimal example")
    namespace: dict = {}
    exec(compile(code, "docs/rl.md", "exec"), namespace)  # the project's own doc text
    metrics = {k: float(v) for k, v in namespace["metrics"].items()}
    assert metrics["tokens"] == 56.0 and all(math.isfinite(v) for v in metrics.values()), metrics
    assert int(namespace["state"].step) == 1


def test_the_documented_dotted_api_paths_resolve_without_importing_jax_up_front():
    script = ("import sys, azr_jax; assert 'jax' not in sys.modules; "
              "f = azr_jax.models.from_pretrained; g = azr_jax.config.load_config; print(callable(f) and callable(g))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
