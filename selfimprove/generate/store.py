"""Rollout store: ``rollouts.jsonl`` per round, written in whole prompt groups and resumable.

Each batch of prompts is appended as complete groups (all ``n`` samples of a prompt) in one write
followed by fsync, so a crash leaves at most a torn last line; it is cut off when the store is
opened again, and ``generate_rollouts`` skips the prompts whose groups are already complete.
The record schema is in docs/DESIGN.md ("Rollout record").
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import InputError
from selfimprove.generate._common import adapter_fingerprint, check_prompt
from selfimprove.generate.base import Generator, Sampling
from selfimprove.runs.io import write_text_atomic
from selfimprove.textio import read_utf8

ROLLOUTS_FILE = "rollouts.jsonl"


def load_prompts(path: str | Path, line_of: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Read a JSONL prompt file into records ``{prompt_id, prompt, meta}``; errors name file:line.

    Each line is an object with ``prompt`` (a string or a list of chat messages), an optional ``id``
    (else the 1-based line number) and any other fields, which are carried into ``meta``.
    ``line_of``, when given, is filled with prompt id -> line number (for later error messages).
    """
    p = Path(path)
    try:
        lines = read_utf8(p, "prompt file").split("\n")
    except FileNotFoundError as exc:
        raise InputError(f"prompt file not found: {p}") from exc
    except OSError as exc:
        raise InputError(f"cannot read prompt file {p}: {exc}") from exc
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "prompt" not in obj:
            raise InputError(f"{where}: missing field 'prompt' (fields: {', '.join(obj) or 'none'})")
        prompt = obj.pop("prompt")
        try:
            check_prompt(prompt, lineno)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from exc
        pid = obj.pop("id", None)
        if pid is None:
            pid = str(lineno)
        elif not isinstance(pid, (str, int)) or isinstance(pid, bool):
            raise InputError(f"{where}: 'id' must be a string or an integer, got {pid!r}")
        pid = str(pid)
        if pid in seen:
            raise InputError(f"{where}: duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = lineno
        if line_of is not None:
            line_of[pid] = lineno
        records.append({"prompt_id": pid, "prompt": prompt, "meta": obj})
    if not records:
        raise InputError(f"prompt file {p} holds no prompts")
    return records


class RolloutStore:
    """Append-only ``rollouts.jsonl`` in ``round_dir``, written in complete prompt groups."""

    def __init__(self, round_dir: str | Path) -> None:
        """Open (or create) the store; a torn last line from an interrupted write is cut off."""
        self.dir = Path(round_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / ROLLOUTS_FILE
        self._recover()

    def _recover(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn line
        if end < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        """All rollout records in file order; a malformed line raises InputError naming file:line."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{self.path}:{lineno}: corrupt rollout line ({exc.msg})") from exc
        return out

    def completed(self, n: int) -> set[str]:
        """Prompt ids whose ``n`` samples are all stored; drops incomplete groups from the file."""
        recs = self.records()
        counts = Counter(r["prompt_id"] for r in recs)
        complete = {pid for pid, c in counts.items() if c >= n}
        if len(complete) < len(counts):
            # Only a crash mid-write can leave a partial group; rewrite without it (atomically).
            self._rewrite([r for r in recs if r["prompt_id"] in complete])
        return complete

    def _rewrite(self, recs: Sequence[dict[str, Any]]) -> None:
        write_text_atomic(self.path, "".join(_line(r) for r in recs))

    def append(self, recs: Iterable[dict[str, Any]]) -> int:
        """Append records (whole prompt groups) in one write + fsync; return how many."""
        text = "".join(_line(r) for r in recs)
        if not text:
            return 0
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        return text.count("\n")


def _line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, ensure_ascii=False) + "\n"


def generate_rollouts(
    generator: Generator | Callable[[], Generator],
    records: Sequence[dict[str, Any]],
    sampling: Sampling,
    store: RolloutStore,
    *,
    adapter: str | None = None,
    adapter_version: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample ``sampling.n`` completions per prompt record into ``store``; skip finished prompts.

    ``records`` are ``{prompt_id (or id), prompt, meta}`` dicts (as ``load_prompts`` returns).
    ``generator`` is an engine or a function returning one, called only when some prompt is
    unfinished (a resumed job whose rollouts are all in the store never starts an engine).
    ``adapter_version`` defaults to the content fingerprint of an adapter folder.
    Returns every rollout record of the store (earlier runs included), in file order.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    todo = []
    seen: set[str] = set()
    done = store.completed(sampling.n)
    for i, rec in enumerate(records):
        if "prompt" not in rec:
            raise InputError(f"prompt record {i}: missing 'prompt'")
        pid = str(rec.get("prompt_id", rec.get("id", i)))
        if pid in seen:
            raise InputError(f"prompt record {i}: duplicate prompt_id {pid!r}")
        seen.add(pid)
        if pid not in done:
            todo.append((pid, rec))
    if not todo:
        return store.records()
    if not hasattr(generator, "generate"):
        generator = generator()
    if adapter is not None and adapter_version is None and Path(adapter).is_dir():
        adapter_version = adapter_fingerprint(adapter)
    with tqdm(
        total=len(records), initial=len(records) - len(todo), desc="rollouts", disable=not progress
    ) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            groups = generator.generate([rec["prompt"] for _, rec in batch], sampling, adapter=adapter)
            if len(groups) != len(batch):
                raise RuntimeError(f"backend returned {len(groups)} groups for {len(batch)} prompts")
            out = []
            for (pid, rec), group in zip(batch, groups, strict=True):
                for k, c in enumerate(group):
                    out.append(
                        {
                            "prompt_id": pid,
                            "prompt": rec["prompt"],
                            "sample_index": k,
                            "completion": c.text,
                            "finish_reason": c.finish_reason,
                            "prompt_tokens": c.prompt_tokens,
                            "completion_tokens": c.completion_tokens,
                            "model": getattr(generator, "model", None),
                            "adapter": str(adapter) if adapter is not None else None,
                            "adapter_version": adapter_version,
                            "backend": getattr(generator, "backend", None),
                            "meta": rec.get("meta", {}),
                        }
                    )
            store.append(out)
            bar.update(len(batch))
    return store.records()
