"""A job's metrics log: ``metrics.jsonl`` (one record per step, rewritten atomically) and TensorBoard events."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.runs.io import read_jsonl, write_jsonl_atomic


class MetricsLog:
    """Records of a run, one per step (a round, a budget, a variant), kept in ``<run_dir>/metrics.jsonl``.

    ``write(records)`` replaces the file with ``records`` (atomically) and sends the numeric values
    of the last record to TensorBoard (``<run_dir>/tensorboard/``) at step ``record[step_key]``.
    A write that changes nothing (a resumed run passing a finished step) leaves the file and the
    events as they were, so a resume adds no duplicate points. Without the ``tensorboard`` package
    the JSONL is still written and ``log`` says why the events are not.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        step_key: str = "round",
        log: Callable[[str], None] | None = None,
    ):
        self.dir = Path(run_dir)
        self.path = self.dir / "metrics.jsonl"
        self.step_key = step_key
        self.tensorboard = tensorboard
        self._log = log or (lambda _msg: None)
        self._tb: Any = None

    def write(self, records: Sequence[Mapping[str, Any]]) -> bool:
        """Replace ``metrics.jsonl`` with ``records``; return False when it already held them."""
        records = [dict(r) for r in records]
        if self.path.exists() and read_jsonl(self.path) == records:
            return False
        write_jsonl_atomic(self.path, records)
        writer = self._writer()
        if writer is not None and records:
            last = records[-1]
            step = last.get(self.step_key)
            for key, value in last.items():
                if key != self.step_key and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, step)
            writer.flush()
        return True

    def _writer(self) -> Any:
        if not self.tensorboard:
            return None
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as exc:  # the tensorboard package is optional: the JSONL is the record
                self._log(f"tensorboard disabled: {exc}")
                self.tensorboard = False
                return None
            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        return self._tb

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the JSONL is complete after every write)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
