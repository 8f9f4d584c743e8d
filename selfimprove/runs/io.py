"""Atomic file writes and reads for run folders: a crash or a full disk never leaves a half-written file.

The one set of writers every job uses (self-training run folders, prompt-optimization workspaces).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync, then rename over ``path``."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        # Disk full / interrupted: drop the temp file; the previous version of ``path`` stays intact.
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any, *, sort_keys: bool = False) -> None:
    """JSON version of :func:`write_text_atomic` (indented; keys in insertion order unless ``sort_keys``)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str, sort_keys=sort_keys)
    write_text_atomic(path, text + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[Any]) -> int:
    """Write one JSON object per line atomically; return the number of rows."""
    lines = [json.dumps(r, ensure_ascii=False, default=str) for r in rows]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def temp_dir_prefix(target: str | Path) -> str:
    """The name prefix of :func:`atomic_dir`'s temporary folders for ``target`` (``.<name>.tmp-``)."""
    return f".{Path(target).name}.tmp-"


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; when the block ends, swap it in as ``target``.

    Whatever ``target`` held before is replaced only once the new folder is complete; an exception in
    the block (or a crash) leaves ``target`` as it was and removes the temporary folder. The temporary
    folder is named ``.<name>.tmp-<pid>-<random>`` (see :func:`temp_dir_prefix`) and is readable by
    others (mode 0o755), like a folder made with ``mkdir``.
    """
    p = Path(target)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=p.parent, prefix=f"{temp_dir_prefix(p)}{os.getpid()}-"))
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        old = None
        if p.exists():
            old = Path(tempfile.mkdtemp(dir=p.parent, prefix=f".{p.name}.old-"))
            os.replace(p, old / p.name)
        os.replace(tmp, p)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file written by this package (every line complete: they are written atomically)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    from selfimprove.errors import InputError

                    raise InputError(f"{p}:{lineno}: corrupt JSON line ({exc.msg})") from None
    return out


def read_json(path: str | Path) -> Any:
    """Read a JSON file; errors name the file."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        from selfimprove.errors import InputError

        raise InputError(f"{p}:{exc.lineno}: corrupt JSON ({exc.msg})") from None
