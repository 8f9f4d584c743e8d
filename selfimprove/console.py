"""Quiet by default: what the commands print, and where everything else goes.

A long command (``run``, ``demo``) prints one line per stage, its progress bars and the round
table. The engines under it print much more: vLLM logs every engine start at INFO level (in its
engine process too), TRL writes a dict of metrics per logging step, and libraries raise
UserWarnings about versions. :func:`quiet_output` sends all of that to a log file kept in the run
folder (``run.log``) instead of the terminal; ``--verbose`` leaves the terminal as it is.

How: the process's file descriptor 1 (standard output, which vLLM's loggers, its engine process
and TRL's metric dicts write to) is pointed at the log file; standard error (the stage lines and
progress bars) stays on the terminal, and Python warnings are logged to the file. The command's
own results are printed on :attr:`QuietOutput.console`, a copy of the terminal's standard output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

LOG_FILE = "run.log"


class QuietOutput:
    """The terminal stream for the command's own output, and the log file everything else went to."""

    def __init__(self, console: TextIO, log_path: Path | None) -> None:
        self.console = console
        self.log_path = log_path

    def echo(self, text: str = "") -> None:
        """Print a line of the command's own output on the terminal."""
        print(text, file=self.console, flush=True)

    def keep_log(self, folder: Path) -> Path | None:
        """Append the log so far to ``FOLDER/run.log`` (when the folder exists); its path, or None."""
        if self.log_path is None or not Path(folder).is_dir():
            return None
        sys.stdout.flush()
        target = Path(folder) / LOG_FILE
        with open(self.log_path, "rb") as src, open(target, "ab") as dst:
            dst.write(src.read())
        with open(self.log_path, "r+b") as fh:  # what was kept is not kept twice
            fh.truncate(0)
        return target


@contextlib.contextmanager
def quiet_output(verbose: bool = False) -> Iterator[QuietOutput]:
    """Send the engines' and libraries' output to a log file unless ``verbose`` (see the module doc).

    The log is written to a temporary file first (a start that fails its checks must not create
    the run folder); call :meth:`QuietOutput.keep_log` to move it into the run folder. A log not
    kept (the command failed) stays in the temporary folder, and its path is printed on the
    terminal; a failed start leaves the run folder as it was.
    """
    if verbose:
        yield QuietOutput(sys.stdout, None)
        return
    sys.stdout.flush()
    fd, name = tempfile.mkstemp(prefix="selfimprove-", suffix=".log")
    log_path = Path(name)
    saved_stdout = os.dup(1)
    console = os.fdopen(os.dup(saved_stdout), "w", buffering=1, encoding="utf-8", errors="replace")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings_logger = logging.getLogger("py.warnings")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = (warnings_logger.handlers[:], warnings_logger.propagate)
    warnings_logger.handlers[:] = [handler]
    warnings_logger.propagate = False
    logging.captureWarnings(True)
    os.dup2(fd, 1)
    os.close(fd)
    output = QuietOutput(console, log_path)
    try:
        yield output
    finally:
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
        logging.captureWarnings(False)
        warnings_logger.handlers[:], warnings_logger.propagate = previous
        if log_path.exists() and log_path.stat().st_size == 0:
            log_path.unlink()
        elif log_path.exists():
            print(f"(the engines' output of this command: {log_path})", file=sys.stderr)
        console.close()
