"""The `azr-jax` command line.

Each sub-command lives in the module that owns the work; this file only wires argparse to
`add_arguments(parser)` / `main(args) -> int` pairs, imported lazily so `azr-jax score` never
imports JAX and `azr-jax --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys

from azr_jax.errors import UserError

# name -> (module, one-line help). Each module defines add_arguments(parser) and main(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("azr_jax.train_cli", "self-play training (resumes from the newest checkpoint in --workdir)"),
    "score": ("azr_jax.azr.score_cli", "score model completions offline with the trainer's code (JSONL in, JSONL out)"),
    "eval": ("azr_jax.eval.cli", "evaluate a checkpoint on a benchmark"),
    "convert": ("azr_jax.convert_cli", "write a training run's policy as a Hugging Face checkpoint directory"),
    "pretrain": ("azr_jax.nano.pretrain", "build the nano base model and tokenizer from the procedural corpus"),
    "bench": ("azr_jax.bench.cli", "performance benchmarks; prints one JSON object"),
    "repro": ("azr_jax.repro", "parity reports against the PyTorch reference stack"),
    "selfcheck": ("azr_jax.selfcheck", "a short self-check of the installed stack"),
}


def build_parser() -> argparse.ArgumentParser:
    """Top-level parser listing the sub-commands (their own flags load with the sub-command)."""
    parser = argparse.ArgumentParser(
        prog="azr-jax",
        description="Absolute Zero Reasoner in JAX: self-play RL on verified Python tasks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def _lazy_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Import only the chosen sub-command's module (fast start, no JAX for host-only commands)."""
    if argv and argv[0] in COMMANDS:
        parser = argparse.ArgumentParser(prog="azr-jax")
        sub = parser.add_subparsers(dest="command")
        module_name, help_text = COMMANDS[argv[0]]
        p = sub.add_parser(argv[0], help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        add_arguments = importlib.import_module(module_name).add_arguments
        if "argv" in inspect.signature(add_arguments).parameters:  # flags that depend on the argv
            add_arguments(p, argv=argv[1:])
        else:
            add_arguments(p)
        return parser
    return build_parser()


def main(argv: list[str] | None = None, *, process_exit: bool = False) -> int:
    """Run one command; returns the exit status. `process_exit`: the process ends right after
    (the `azr-jax` executable), so an error line may silence stderr behind it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _lazy_parser(argv)
        args = parser.parse_args(argv)
        empty = _empty_option(parser, args)
        if empty:  # `--workdir ""` ran as no --workdir (runs/<name>), `--out ""` wrote nothing, ...
            raise UserError(f"{empty} is given an empty value (an unset shell variable?); give it a value")
        module = importlib.import_module(args._module)
        status = int(module.main(args) or 0)
        if sys.stdout is not None:  # a closed pipe is reported below, not by the interpreter at exit
            sys.stdout.flush()
        return status
    except UserError as e:
        _say_error(str(e), process_exit)
        return 2
    except BrokenPipeError:
        # Whoever read stdout stopped reading (`azr-jax bench ... | head -c1`): one line, not a
        # traceback (the main process writes to no other pipe; the sandbox handles its own).
        _stdout_to_devnull()
        _say_error("standard output was closed before all of the output was written (broken pipe)", process_exit)
        return 2
    except KeyboardInterrupt:
        if process_exit:
            for handler in logging.getLogger().handlers:  # the trainer's "stopping now" first
                handler.flush()
            _say_last("azr-jax: interrupted\n")
        else:
            print("azr-jax: interrupted", file=sys.stderr)
        return 130


def _say_error(message: str, process_exit: bool) -> None:
    if process_exit:
        _say_last(f"azr-jax: error: {message}\n")
    else:
        print(f"azr-jax: error: {message}", file=sys.stderr)


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null: what is still buffered for a closed pipe would otherwise raise
    BrokenPipeError again when it is flushed (by `run`, or the interpreter at exit)."""
    try:
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured, embedded)
        pass


def _empty_option(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The first option (as its flag) that `args` holds as an empty string, if any."""
    flags, parsers = {}, [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings:
                flags.setdefault(action.dest, action.option_strings[-1])
    return next((flags[dest] for dest, value in vars(args).items() if value == "" and dest in flags), None)


def check_step_option(value: int | None, flag: str) -> None:
    """A step-number option (`--step`, `--resume-step`): refused at once when not positive, not
    after the model is set up and the checkpoint listing says step 0 does not exist."""
    if value is not None and value <= 0:
        raise UserError(f"{flag} must be a positive step number, got {value}")


def _say_last(text: str) -> None:
    """Write `text` as the last thing on stderr. Background threads of libraries interrupted
    mid-work (Orbax's asynchronous reads of a corrupt checkpoint) would otherwise print
    tracebacks around it while the interpreter shuts down: stderr goes to /dev/null first, and
    the text to the original stream."""
    sys.stderr.flush()
    try:
        fd = sys.stderr.fileno()
        original = os.dup(fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stderr (captured, embedded): just print
        print(text, end="", file=sys.stderr, flush=True)
        return
    os.write(original, text.encode("utf-8", "replace"))
    os.close(original)


def run() -> None:
    """The `azr-jax` executable."""
    status = main(process_exit=True)
    if status in (2, 130):
        # An error, or interrupted at once (during start-up, or by a second signal): what the
        # command opened is closed, but library threads may still be mid-work or waiting. The
        # interpreter's shutdown can crash under them (exit status 139 instead of 130), and it
        # waits for them: after a save that failed to create its directory, Orbax's save threads
        # wait 300 s for a signal that never comes, so the error line was followed by a 5-minute hang.
        sys.stdout.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
