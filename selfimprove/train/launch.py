"""The train stage under ``accelerate launch``: the job writes a spec, waits, then reads the adapter back.

Parent side, :func:`launch_training` (called by a job's train stage when its config sets
``training.accelerate_config``): writes ``spec.json`` and ``rows.jsonl`` into a ``train_launch/``
folder beside the adapter folder, runs::

    python -m accelerate.commands.launch --config_file CONFIG --main_process_port FREE_PORT \\
        -m selfimprove.train.launch train_launch/spec.json

with the same interpreter and environment, keeps the processes' output in
``train_launch/output.log`` (and passes it on to standard output, which a quiet command keeps in
the run folder's ``run.log``), waits, and returns the :class:`TrainResult` that rank 0 wrote to
``train_launch/result.json``. Ctrl-C or SIGTERM of the job ends the launcher's process group, and
every training process also ends itself once the job or the launcher is gone: no trainer outlives
the job.

Child side, ``python -m selfimprove.train.launch SPEC`` (in every process): calls the job's entry
function (``module:function`` named in the spec) with the spec's payload, the rows and the adapter
folder; the entry rebuilds what it needs (config, task, reward terms) and calls the same trainer
function as the in-process path. Only rank 0 writes the result; the trainers save the adapter
from the main process only.
"""

from __future__ import annotations

import collections
import importlib
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfimprove import errors
from selfimprove.errors import SelfImproveError
from selfimprove.runs.io import read_json, read_jsonl, write_json_atomic, write_jsonl_atomic

if TYPE_CHECKING:  # imported where used: it loads transformers, which a stopped launch never needs
    from selfimprove.train.common import TrainResult

LAUNCH_DIR = "train_launch"
SPEC_FILE = "spec.json"
ROWS_FILE = "rows.jsonl"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
OUTPUT_FILE = "output.log"
# Seconds the launcher gets to stop its processes after SIGTERM before they are killed.
STOP_GRACE_S = 15.0
# Lines of the processes' output kept in memory for the error message.
TAIL_LINES = 200


class LaunchError(SelfImproveError):
    """Training under ``accelerate launch`` failed; the message names the log with its output."""


def launch_dir(out_dir: str | Path) -> Path:
    """The folder of a launched training's spec, rows, result and output: beside the adapter folder."""
    return Path(out_dir).parent / LAUNCH_DIR


def free_port() -> int:
    """A TCP port free on this machine now (for the processes' rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_environment() -> dict[str, str]:
    """This process's environment, with this copy of the package first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    site_dirs = {str(Path(p).resolve()) for p in site.getsitepackages()}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in site_dirs and root not in paths:
        paths.insert(0, root)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"  # the output reaches the log as it is written
    return env


def launch_command(accelerate_config: str | Path, spec: str | Path, port: int) -> list[str]:
    """The ``accelerate launch`` command line, run by this interpreter (the same environment)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config),
        "--main_process_port",
        str(port),
        "-m",
        "selfimprove.train.launch",
        str(spec),
    ]


def launch_training(
    entry: str,
    payload: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    accelerate_config: str | Path,
    progress: bool = False,
) -> TrainResult:
    """Train under ``accelerate launch`` with ``accelerate_config``; return rank 0's TrainResult.

    ``entry`` (``module:function``) is called in every process as ``entry(payload, rows, out_dir)``
    and returns the TrainResult; ``payload`` is what it needs beyond the rows (JSON-able).
    ``accelerate_config`` is read as ``training.accelerate_config`` is (working folder, then the
    shipped configs). Raises LaunchError (or the error the training raised) with the log path when
    the processes fail.
    """
    from selfimprove.config.sections import resolve_accelerate_config

    try:
        accelerate_config = resolve_accelerate_config(accelerate_config)
    except FileNotFoundError as exc:
        raise errors.ConfigError(f"training.accelerate_config: accelerate config not found: {exc}") from None
    out_dir = Path(out_dir)
    work = launch_dir(out_dir)
    shutil.rmtree(work, ignore_errors=True)  # nothing of an earlier attempt is read back
    work.mkdir(parents=True)
    write_jsonl_atomic(work / ROWS_FILE, rows)
    spec = {
        "entry": entry,
        "payload": dict(payload),
        "rows": str((work / ROWS_FILE).resolve()),
        "out_dir": str(out_dir.resolve()),
        "result": str((work / RESULT_FILE).resolve()),
        "error": str((work / ERROR_FILE).resolve()),
        "parent_pid": os.getpid(),
    }
    write_json_atomic(work / SPEC_FILE, spec)
    log_path = work / OUTPUT_FILE
    cmd = launch_command(accelerate_config, work / SPEC_FILE, free_port())
    if progress:
        print(
            f"  training under accelerate launch ({accelerate_config}); output: {log_path}", file=sys.stderr
        )
    status, tail = _run_logged(cmd, log_path)
    if status != 0:
        raise _failure(status, tail, work, log_path, accelerate_config)
    if not (work / RESULT_FILE).is_file():
        raise LaunchError(
            f"training under accelerate launch ended without a result ({work / RESULT_FILE} is missing); "
            f"its output: {log_path}"
        )
    from selfimprove.train.common import TrainResult

    return TrainResult.from_dict(read_json(work / RESULT_FILE))


def _run_logged(cmd: list[str], log_path: Path) -> tuple[int, list[str]]:
    """Run ``cmd`` in its own process group, its output into ``log_path`` and standard output.

    Returns (exit status, the last lines of its output). Any exception while waiting (Ctrl-C,
    SIGTERM raised by the CLI) stops the process group first.
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_environment(),
            start_new_session=True,  # its own process group: stopped as one
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in iter(proc.stdout.readline, b""):
                log.write(line)
                log.flush()
                text = line.decode("utf-8", errors="replace")
                tail.append(text.rstrip("\n"))
                try:
                    sys.stdout.write(text)
                except (ValueError, OSError):  # standard output closed: the log file still has it
                    pass

        reader = threading.Thread(target=pump, name="train-launch-output", daemon=True)
        reader.start()
        try:
            status = proc.wait()
        except BaseException:
            stop_process_group(proc)
            raise
        finally:
            reader.join(timeout=5)
            try:
                sys.stdout.flush()
            except (ValueError, OSError):
                pass
    return status, list(tail)


def stop_process_group(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL after ``grace`` seconds if it is still running.

    The launcher passes SIGTERM on to its training processes; each of them also ends itself when
    the launcher is gone (see :func:`watch_parents`), so a SIGKILL leaves none behind either.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


_ERROR_LINE = re.compile(r"\b([A-Za-z_][\w.]*(?:Error|Exception)): (.+)")


def _failure(
    status: int, tail: Sequence[str], work: Path, log_path: Path, accelerate_config: str | Path
) -> Exception:
    """The error of a failed launch: the training's own error when it wrote one, else the output's."""
    if (work / ERROR_FILE).is_file():
        err = read_json(work / ERROR_FILE)
        cls = getattr(errors, str(err.get("type")), None)
        if not (isinstance(cls, type) and issubclass(cls, SelfImproveError)):
            cls = LaunchError
        return cls(f"{err.get('message')} (training under accelerate launch; its output: {log_path})")
    at = [i for i, line in enumerate(tail) if _ERROR_LINE.search(line) and "ChildFailedError" not in line]
    cause = ""
    if at:
        m = _ERROR_LINE.search(tail[at[-1]])
        assert m is not None
        cause = f": {m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
    # The lines that led to the error (the end of its traceback), else the end of the output.
    end = at[-1] + 1 if at else len(tail)
    last = "\n    ".join(line for line in tail[max(0, end - 8) : end] if line.strip())
    return LaunchError(
        f"training under accelerate launch ({accelerate_config}) failed with exit status {status}{cause}; "
        f"its output: {log_path}" + (f"\n  last lines:\n    {last}" if last else "")
    )


# ---------------------------------------------------------------------------------------------
# Child side: python -m selfimprove.train.launch SPEC
# ---------------------------------------------------------------------------------------------


def watch_parents(job_pid: int, interval: float = 1.0) -> None:
    """End this process when the job that launched it, or the launcher above it, is gone.

    A SIGKILL of the job (or of ``accelerate launch``) cannot pass anything on; without this the
    training processes would run on, each holding a model copy.
    """
    launcher = os.getppid()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch() -> None:
        while True:
            time.sleep(interval)
            if not alive(job_pid) or os.getppid() != launcher:
                os._exit(143)

    threading.Thread(target=watch, name="train-launch-watch", daemon=True).start()


def _entry(name: str) -> Any:
    module, _, func = name.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the spec's entry in this process (one of ``accelerate launch``'s); rank 0 writes the result."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m selfimprove.train.launch SPEC_JSON", file=sys.stderr)
        return 2
    spec = read_json(args[0])
    watch_parents(int(spec["parent_pid"]))
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = _entry(spec["entry"])(spec["payload"], read_jsonl(spec["rows"]), Path(spec["out_dir"]))
    except SelfImproveError as exc:
        # The job raises the same error, with the message, as the in-process path would.
        if rank == 0:
            write_json_atomic(spec["error"], {"type": type(exc).__name__, "message": str(exc)})
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 2
    if rank == 0:
        write_json_atomic(spec["result"], result.to_dict())
    return 0


def _leave(code: int) -> None:
    """End a training process once its work is done, without the interpreter's teardown.

    With gloo, a rank whose C++ threads are destroyed at interpreter exit can abort (SIGABRT,
    "terminate called without an active exception") after training finished, and the launcher
    then reports the whole stage failed. The ranks meet, the process group is closed, output is
    flushed, and the process exits at once.
    """
    if code == 0:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()
        except Exception as exc:  # the result is written; say why the clean close failed
            print(f"closing the process group: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _leave(main())
