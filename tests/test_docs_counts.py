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


def test_the_reference_fixture_counts_and_quirk_rows_are_the_fixtures():
    import json

    rows = [json.loads(line) for line in (ROOT / "tests/fixtures/reference_scoring/expected.jsonl").open()]
    quirks: dict[str, set[str]] = {}
    for row in rows:
        for code in filter(None, (row.get("ref_quirk") or "").split(",")):
            quirks.setdefault(code, set()).add(row["id"])
    tagged = [r for r in rows if r.get("ref_quirk")]
    untagged = len(rows) - len(tagged)
    readme = re.search(r"on all (\d+) untagged fixture cases; the (\d+)\s+cases", (ROOT / "README.md").read_text())
    assert readme and [int(n) for n in readme.groups()] == [untagged, len(tagged)]
    deviations = (ROOT / "docs/deviations.md").read_text()
    stated = re.search(r"all (\d+) untagged rows agree.*?all (\d+) tagged\s+rows follow this table, and (\d+) of them"
                       r".*?\(the\s+(\d+) tagged only (.*?), and the (\d+) `truncated_gold` rows", deviations, re.S)
    only = set(re.findall(r"`(\w+)`", stated.group(5)))
    tagged_only = sum(1 for r in tagged if set(r["ref_quirk"].split(",")) <= only)
    assert [int(stated.group(i)) for i in (1, 2, 4, 6)] == [untagged, len(tagged), tagged_only,
                                                            len(quirks["truncated_gold"])]
    assert int(stated.group(3)) == tagged_only + len(quirks["truncated_gold"])
    needs = sum("reward_needs_solver_responses" in r.get("notes", []) for r in rows)
    assert _stated("docs/deviations.md", r"the (\d+) `reward_needs_solver_responses` rows") == [needs]
    # each quirk row of the tables lists exactly the fixture rows tagged with its code
    listed = {}
    for line in deviations.splitlines():
        code = re.match(r"\| `(\w+)` \|", line)
        if code:
            listed[code.group(1)] = set(re.findall(r"\b[ps][dafi]-\d{4}\b", line.split("|")[-2]))
    assert set(quirks) <= set(listed)
    assert {c: sorted(ids) for c, ids in listed.items() if ids != quirks.get(c, set())} == {}
