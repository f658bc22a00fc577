"""User JSONL files: line-numbered one-line errors; the CRUXEval-format loader on hand-made lines."""

import json
import os

import pytest

from azr_jax.errors import UserError
from azr_jax.eval.benchmarks import load_cruxeval
from azr_jax.jsonl import read_objects


def test_read_objects_skips_blank_lines_and_names_bad_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(read_objects(p, "test file")) == [(1, {"a": 1}), (3, {"a": 2})]
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"test file .* line 2: expected a JSON object"):
        list(read_objects(p, "test file"))
    p.write_text('{"a": 1}\n{oops\n')  # the parser's own words say what is wrong
    with pytest.raises(UserError, match=r"line 2: not valid JSON \(Expecting property name enclosed in double quotes\)"):
        list(read_objects(p, "test file"))
    with pytest.raises(UserError, match="test file not found"):
        list(read_objects(tmp_path / "missing.jsonl", "test file"))


def test_read_objects_reads_any_json_and_refuses_unreadable_lines_in_one_line(tmp_path):
    p = tmp_path / "x.jsonl"
    # U+2028 and U+0085 inside a string (json.dumps with ensure_ascii=False) do not end a line
    p.write_text(json.dumps({"code": "a\u2028b\u0085c"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert list(read_objects(p, "test file")) == [(1, {"code": "a\u2028b\u0085c"})]
    bad_lines = {
        b'{"a": "\xff"}': "line 2: not UTF-8 text",
        b"[" * 100_000 + b"]" * 100_000: "line 2: not valid JSON .nested too deeply",
        b'{"a": ' + b"9" * 5000 + b"}": "line 2: not valid JSON .Exceeds the limit",
        # Python's parser reads these; they are not JSON, and a seed or benchmark file holding
        # them is a mistake to name, not a value to run on
        b'{"a": NaN}': "line 2: not valid JSON .NaN is not a JSON value",
        b'{"a": -Infinity}': "line 2: not valid JSON .-Infinity is not a JSON value",
        b'{"a": 1e400}': "line 2: not valid JSON .1e400 is out of range",
    }
    for line, message in bad_lines.items():
        p.write_bytes(b'{"ok": 1}\n' + line + b"\n")
        with pytest.raises(UserError, match=message):
            list(read_objects(p, "test file"))
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')  # a byte-order mark (Windows editors) is not part of line 1
    assert list(read_objects(p, "test file")) == [(1, {"a": 1})]


def test_cruxeval_lines_become_deduction_and_abduction_items(tmp_path):
    p = tmp_path / "crux.jsonl"
    rows = [{"code": "def f(x):\n    return x + 1", "input": "1", "output": "2", "id": "sample_0"},
            {"code": "def f(s):\n    return s[::-1]", "input": "'ab'", "output": "'ba'"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_cruxeval(p)
    assert [i["id"] for i in items] == ["cruxeval-o/sample_0", "cruxeval-i/sample_0", "cruxeval-o/line2", "cruxeval-i/line2"]
    assert [i["task"] for i in items] == ["deduction", "abduction"] * 2
    assert items[2]["problem"] == {"program": rows[1]["code"], "input": "'ab'", "output": "'ba'", "imports": []}
    p.write_text(json.dumps({"code": "def f(): pass", "input": 3, "output": "None"}) + "\n")
    with pytest.raises(UserError, match="line 1: expected an object with string fields"):
        load_cruxeval(p)


def test_read_objects_skips_whitespace_only_lines(tmp_path):
    """A file saved with Windows line ends has "\\r" on its blank lines: blank all the same."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\r\n\r\n  \t\r\n{"a": 2}\r\n')
    assert list(read_objects(p, "test file")) == [(1, {"a": 1}), (4, {"a": 2})]


def test_read_json_object_names_the_file_and_what_it_is(tmp_path):
    from azr_jax.jsonl import read_json_object

    p = tmp_path / "config.json"
    p.write_text('{"a": [1]}')
    assert read_json_object(p, "model config") == {"a": [1]}
    for content, match in [(b"[1, 2]", r"config.json must hold a JSON object \(model config\), found list"),
                           (b'{"a": ', r"config.json is not valid JSON \(model config\)"),
                           (b'{"a": "\xff"}', r"config.json is not valid JSON \(model config\)"),  # not UTF-8
                           (b"[" * 100_000 + b"]" * 100_000, r"is not valid JSON \(model config\)"),
                           (b'{"rope_theta": NaN}', r"is not valid JSON \(model config\): .*NaN"),  # Python's json reads it
                           (b'{"a": -Infinity}', r"is not valid JSON \(model config\): .*Infinity"),
                           (b'{"a": 1e400}', r"is not valid JSON \(model config\)")]:
        p.write_bytes(content)
        with pytest.raises(UserError, match=match):
            read_json_object(p, "model config")


def test_an_atomic_write_that_fails_leaves_the_old_content(tmp_path, monkeypatch):
    """A reader (another process, the next start after a kill) sees the old file or the new one:
    the new text goes to a temporary file first, never into the file being replaced."""
    import os

    from azr_jax import jsonl

    p = tmp_path / "state.json"
    p.write_text("old")

    def killed(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(jsonl.os, "replace", killed)
    with pytest.raises(OSError):
        jsonl.write_text_atomically(p, "new")
    assert p.read_text() == "old"
    monkeypatch.undo()
    jsonl.write_text_atomically(p, "new", durable=True)
    assert p.read_text() == "new" and os.listdir(tmp_path) == ["state.json"]


def test_a_directory_given_as_an_input_file_is_named_as_one(tmp_path):
    """`--in DIR` is named in one line (p.exists() let it through to a traceback from read_bytes),
    as a directory (it was "not found")."""
    with pytest.raises(UserError, match=f"test file {tmp_path} is a directory; give a JSONL file$"):
        list(read_objects(tmp_path, "test file"))
    fifo = tmp_path / "fifo"  # nor is any other non-file waited on or read (a FIFO would block)
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=f"test file {fifo} is not a regular file; give a JSONL file$"):
        list(read_objects(fifo, "test file"))
    with pytest.raises(UserError, match=f"test file not found: {tmp_path / 'none'}$"):
        list(read_objects(tmp_path / "none", "test file"))


def test_read_json_object_refuses_an_integer_past_the_digit_limit(tmp_path):
    """Python refuses to parse integers of more than 4300 digits with a plain ValueError, which is
    neither a JSONDecodeError nor a UnicodeDecodeError."""
    from azr_jax.jsonl import read_json_object

    p = tmp_path / "config.json"
    p.write_text('{"a": ' + "9" * 5000 + "}")
    with pytest.raises(UserError, match=r"config.json is not valid JSON \(model config\)"):
        read_json_object(p, "model config")


def test_check_output_file_names_what_would_fail_the_write_at_the_end(tmp_path, monkeypatch):
    from pathlib import Path

    from azr_jax import jsonl

    assert jsonl.check_output_file(tmp_path / "new.json", "--out") == tmp_path / "new.json"
    with pytest.raises(UserError, match=f"--out {tmp_path} is a directory; give a file path"):
        jsonl.check_output_file(tmp_path, "--out")
    with pytest.raises(UserError, match=f"directory {tmp_path / 'no'} does not exist"):
        jsonl.check_output_file(tmp_path / "no" / "x.json", "--out")
    # Permissions, simulated (root writes anywhere): a read-only file to replace, and a
    # directory in which no new file can be made.
    old = tmp_path / "old.json"
    old.write_text("")
    monkeypatch.setattr(jsonl.os, "access", lambda path, mode: Path(path) != old)
    with pytest.raises(UserError, match="old.json is not writable"):
        jsonl.check_output_file(old, "--out")
    monkeypatch.setattr(jsonl.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(UserError, match="new.json is not writable"):
        jsonl.check_output_file(tmp_path / "new.json", "--out")


def test_check_output_dir_looks_at_the_nearest_existing_directory(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from azr_jax import jsonl

    assert jsonl.check_output_dir(tmp_path / "new" / "sub", "--workdir") == tmp_path / "new" / "sub"
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(UserError, match=f"--workdir {a_file} exists and is not a directory"):
        jsonl.check_output_dir(a_file, "--workdir")
    with pytest.raises(UserError, match=f"--workdir {a_file / 'sub'}: {a_file} is not a directory"):
        jsonl.check_output_dir(a_file / "sub", "--workdir")
    # An existing run directory that can be listed but not entered (no x bit: simulated, root
    # enters anywhere): checked itself, not its parent, and for search permission too.
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(jsonl.os, "access", lambda path, mode: not (Path(path) == run and mode & os.X_OK))
    with pytest.raises(UserError, match=f"--workdir {run}: {run} is not writable"):
        jsonl.check_output_dir(run, "--workdir")


def test_check_output_dir_checks_the_names_inside_that_the_command_writes(tmp_path, monkeypatch):
    # A writable directory holding another user's files (a run resumed, a base rebuilt in place):
    # the write into them failed only after the work (simulated: root writes anywhere).
    import os
    from pathlib import Path

    from azr_jax import jsonl

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    (run / "notes.txt").write_text("")
    inside = ("checkpoints", "metrics.jsonl", "plots")  # plots/ not made yet: nothing to check
    assert jsonl.check_output_dir(run, "--workdir", inside=inside) == run
    for name, mode in (("checkpoints", os.X_OK), ("checkpoints", os.W_OK), ("metrics.jsonl", os.W_OK)):
        monkeypatch.setattr(jsonl.os, "access", lambda path, m, name=name, mode=mode:
                            not (Path(path) == run / name and m & mode))
        with pytest.raises(UserError, match=f"--workdir {run}: {run / name} is not writable"):
            jsonl.check_output_dir(run, "--workdir", inside=inside)
    # what the command does not write is not looked at
    monkeypatch.setattr(jsonl.os, "access", lambda path, m: Path(path) != run / "notes.txt")
    assert jsonl.check_output_dir(run, "--workdir", inside=inside) == run


def test_an_output_file_replaces_the_old_content_and_is_complete_when_the_block_ends(tmp_path):
    from azr_jax.jsonl import OutputFile

    p = tmp_path / "out.jsonl"
    p.write_text("results of an earlier run\n")
    with OutputFile(p, "--out") as out:
        out.write('{"a": 1}\n')
    assert p.read_text() == '{"a": 1}\n'  # written over, not appended to; flushed though `out` lives on


def test_output_file_failures_are_one_user_error_naming_the_file(tmp_path):
    """/dev/full takes every open and fails every write with ENOSPC: a full disk on demand."""
    from azr_jax.jsonl import OutputFile

    with pytest.raises(UserError, match=f"--out {tmp_path}: cannot open"):
        OutputFile(tmp_path, "--out")  # a directory
    with pytest.raises(UserError, match=r"--out /dev/full: write failed \(No space left on device\)"):
        with OutputFile("/dev/full", "--out") as out:
            out.write("x" * 100_000)  # more than the buffer holds: written, and failing, now
    small = OutputFile("/dev/full", "--out")
    small.write("x\n")  # buffered: the full disk only shows when it is flushed
    with pytest.raises(UserError, match=r"--out /dev/full: write failed \(No space left on device\)"):
        small.close()
    # An error inside the block is what the user sees, not the failed flush of its partial output.
    with pytest.raises(KeyError, match="the work failed"):
        with OutputFile("/dev/full", "--out") as out:
            out.write("x\n")
            raise KeyError("the work failed")


def test_a_durable_write_is_synced_file_and_directory_and_a_plain_one_is_not(tmp_path, monkeypatch):
    """durable=True (the run's records a restart reads) fsyncs the file before the rename and the
    directory after it; without it nothing waits for the disk."""
    import os

    from azr_jax import jsonl

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(jsonl.os, "fsync", lambda fd: synced.append(os.path.realpath(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    jsonl.write_text_atomically(tmp_path / "plain.json", "a")
    assert synced == []
    jsonl.write_text_atomically(tmp_path / "state.json", "b", durable=True)
    assert synced == [str(tmp_path / "state.json.tmp"), str(tmp_path)]
    assert (tmp_path / "state.json").read_text() == "b"


def test_an_output_file_is_utf8_whatever_it_holds(tmp_path):
    from azr_jax.jsonl import OutputFile

    with OutputFile(tmp_path / "out.jsonl", "--out") as out:
        out.write('{"code": "print(\'\u00e9\u4f60\U0001f600\')"}\n')
    assert (tmp_path / "out.jsonl").read_bytes().decode("utf-8") == '{"code": "print(\'\u00e9\u4f60\U0001f600\')"}\n'
