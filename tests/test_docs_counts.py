"""Counts the README and docs state about the test suite itself follow the code they describe."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "sandbox"))


def _stated(path: str, pattern: str) -> list[int]:
    text = (ROOT / path).read_text()
    return [int(n) for n in re.findall(pattern, text)]


def test_the_hostile_program_count_is_the_corpus_size():
    import hostile_corpus

    stated = _stated("README.md", r"(\d+) hostile programs") + _stated("docs/sandbox.md", r"\((\d+)\s+hostile programs")
    assert len(stated) == 2 and set(stated) == {len(hostile_corpus.CASES)}, stated


def test_the_readme_states_the_number_of_tests_collected(whole_suite_count):
    count = whole_suite_count  # this session's own count when it runs the whole suite (CI does)
    if count is None:
        import subprocess

        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        collected = re.search(r"(\d+) tests? collected", out.stdout)
        assert collected, out.stdout[-2000:] + out.stderr[-2000:]
        count = int(collected.group(1))
    assert _stated("README.md", r"runs everything CI runs \((\d+) tests;") == [count]
