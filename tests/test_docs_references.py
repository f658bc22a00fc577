"""What the README and docs point at exists: the docs and sections they cite, their links and
images, the repository files and test functions they name, the flags of every `azr-jax`
command they show, and each benchmark's flags as docs/benchmarks.md lists them (a renamed flag,
file or section would otherwise only show when a reader follows it)."""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
REPO_PATH = re.compile(r"`((?:tests|azr_jax|configs|launch|notebooks|docs)/[\w./*-]+)`")
DOC_SECTION = re.compile(r"docs/(\w+)\.md(?:,? \(?\"([^\"]+)\")?")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"azr-jax\s+([a-z]+)(?:\s+([a-z]+))?")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def section_names(doc: str) -> list[str]:
    """Headings and bold run-in labels (`- **Memory** (...)`), the two things a doc's
    `docs/x.md, "Name"` can point at."""
    text = read(doc)
    return ([line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
            + re.findall(r"\*\*([^*]+)\*\*", re.sub(r"`[^`\n]*`", "", text)))  # `2**32` is no bold


def test_cited_docs_sections_links_and_files_exist():
    missing = []
    for doc in DOCS:
        text = read(doc)
        for name, section in DOC_SECTION.findall(text):
            target = f"docs/{name}.md"
            if not (ROOT / target).is_file():
                missing.append(f"{doc}: {target}")
            elif section and not any(section.lower() in s.lower() for s in section_names(target)):
                missing.append(f'{doc}: section "{section}" of {target}')
        prose = re.sub(r"`[^`\n]*`", "", text)  # `REGISTRY[name](args)` is code, not a link
        for target in LINK.findall(prose):
            if "://" not in target and not (ROOT / doc).parent.joinpath(target.split("#")[0]).exists():
                missing.append(f"{doc}: link {target}")
        for path in REPO_PATH.findall(text):
            if not list(ROOT.glob(path)):
                missing.append(f"{doc}: {path}")
    assert not missing, "\n".join(missing)


def test_test_functions_the_docs_name_exist():
    defined = set()
    for path in (ROOT / "tests").rglob("*.py"):
        defined.update(re.findall(r"^\s*def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
        defined.add(path.stem)  # a test file named without its directory
    named = {(doc, name) for doc in DOCS for name in re.findall(r"\b(test_\w+)", read(doc))}
    assert len(named) > 20  # guards the scan itself
    assert sorted(f"{doc}: {name}" for doc, name in named if name not in defined) == []


def command_lines(text: str):
    """Each fenced code line (continuation backslashes joined) and each inline code span."""
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
        yield from block.replace("\\\n", " ").splitlines()
    yield from re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))


def documented_commands() -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(doc, argv prefix, flags) of every `azr-jax COMMAND [SUBCOMMAND] ...` the docs show."""
    found = []
    for doc in DOCS:
        for line in command_lines(read(doc)):
            matches = list(COMMAND.finditer(line))
            for i, m in enumerate(matches):
                rest = line[m.end():matches[i + 1].start() if i + 1 < len(matches) else len(line)]
                rest = rest.split("  #")[0]  # a trailing shell comment
                argv = tuple(a for a in m.groups() if a)
                found.append((doc, argv, FLAG.findall(rest)))
    return found


def parser_options(argv: tuple[str, ...]) -> set[str] | None:
    """The option strings `azr-jax ARGV ...` accepts; None for an unknown command."""
    from azr_jax import cli

    if argv[0] not in cli.COMMANDS:
        return None
    options: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            options.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if name in argv:
                        walk(sub)

    walk(cli._lazy_parser(list(argv)))
    return options


def wrong_flags(commands) -> list[str]:
    options: dict[tuple[str, ...], set[str] | None] = {}
    wrong = []
    for doc, argv, flags in commands:
        if argv not in options:
            options[argv] = parser_options(argv)
        if options[argv] is None:
            wrong.append(f"{doc}: azr-jax {argv[0]} is not a command")
            continue
        wrong += [f"{doc}: azr-jax {' '.join(argv)} has no {flag}" for flag in flags if flag not in options[argv]]
    return wrong


def test_documented_cli_flags_exist():
    commands = documented_commands()
    assert len(commands) > 100 and {argv[0] for _, argv, _ in commands} >= {"train", "eval", "score", "bench"}
    assert wrong_flags(commands) == []


def test_a_flag_the_command_lacks_would_be_caught(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "read", lambda doc: (
        "`azr-jax train --config c.py --no-such-flag`, `azr-jax eval --run R --step 3` and\n"
        "```\nazr-jax bench packing --rows 8 \\\n    --batch 8   # a comment --not-a-flag\n```\n"
        "`azr-jax frobnicate --x`\n"))
    monkeypatch.setattr(sys.modules[__name__], "DOCS", ["x.md"])
    assert sorted(wrong_flags(documented_commands())) == [
        "x.md: azr-jax bench packing has no --batch", "x.md: azr-jax frobnicate is not a command",
        "x.md: azr-jax train has no --no-such-flag"]


def bench_flags_stated(text: str) -> dict[str, set[str]]:
    """docs/benchmarks.md's "Flags of `bench a`, `bench b` ...: FLAGS. Beyond those, `bench a`
    takes FLAGS; `bench b` takes FLAGS ..." bullet: the flags it gives each of those commands."""
    bullet = re.search(r"^- Flags of (.*?): (.*?)\. Beyond those, (.*?)(?=^\S|^- |\Z)", text, re.S | re.M)
    assert bullet, "docs/benchmarks.md has no 'Flags of `bench ...`: ... Beyond those, ...' bullet"
    bullet = re.match(r"(.*?): (.*?)\. Beyond those, (.*)", " ".join(bullet.group(0).split()))
    common = set(FLAG.findall(re.sub(r"\([^)]*\)", "", bullet.group(2))))
    stated = {name: set(common) for name in re.findall(r"`bench (\w+)`", bullet.group(1))}
    for part in re.sub(r"\([^)]*\)", "", bullet.group(3)).split(";"):
        for name in re.findall(r"`bench (\w+)` takes", part):
            stated[name] |= set(FLAG.findall(part))
    return stated


def test_the_bench_flags_listed_are_each_commands_flags():
    stated = bench_flags_stated(read("docs/benchmarks.md"))
    assert set(stated) == {"sample", "train", "logits", "attention"} and "--no-baseline" in stated["train"]
    actual = {name: parser_options(("bench", name)) - {"-h", "--help"} for name in stated}
    assert {name: sorted(stated[name] ^ actual[name]) for name in stated if stated[name] != actual[name]} == {}
