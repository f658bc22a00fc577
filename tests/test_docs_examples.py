"""Python examples in the docs run as written, and the modules the docs say import no JAX do not."""

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


def modules_without_jax(text: str) -> list[str]:
    """The modules docs/architecture.md's package map says import no JAX: a row whose column
    reads "no", or the named modules of "yes (a/b modules: no)"."""
    modules = []
    for path, claim in re.findall(r"^\| `(azr_jax/[\w/.]*)` \|[^|]*\| ([^|]*) \|$", text, re.M):
        named = re.search(r"\(([\w/]+) modules: no\)", claim)
        if named:
            files = [ROOT / path / f"{name}.py" for name in named.group(1).split("/")]
        elif claim.strip("* ") == "no":
            files = [ROOT / path] if path.endswith(".py") else sorted((ROOT / path).rglob("*.py"))
        else:
            continue
        for file in files:
            assert file.is_file(), f"docs/architecture.md names {file.relative_to(ROOT)}, which is not there"
            parts = file.relative_to(ROOT).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def test_the_modules_the_package_map_calls_jax_free_import_no_jax():
    """`azr-jax score` and the sandbox run on hosts without an accelerator stack, and start fast:
    the package map's "imports JAX? no" is a contract (docs/architecture.md)."""
    modules = modules_without_jax((ROOT / "docs" / "architecture.md").read_text())
    assert {"azr_jax.config", "azr_jax.azr.scoring", "azr_jax.sandbox.pool", "azr_jax.models.tokenizer",
            "azr_jax.models.config"} <= set(modules)  # guards the parse
    script = ("import importlib, sys\n"
              f"for name in {modules!r}:\n"
              "    importlib.import_module(name)\n"
              "    if 'jax' in sys.modules:\n"
              "        print(name)\n"
              "        break\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{out.stdout.strip()} imports JAX, which docs/architecture.md says it does not"
