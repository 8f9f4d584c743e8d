"""Reading the user's text files (configs, tasks, prompt files): UTF-8, errors with file and line."""

from __future__ import annotations

from pathlib import Path

from selfimprove.errors import InputError, SelfImproveError


def read_utf8(path: str | Path, what: str = "file", error: type[SelfImproveError] = InputError) -> str:
    """The text of ``path`` (UTF-8, a leading byte-order mark dropped).

    A byte sequence that is not UTF-8 raises ``error`` naming the file, the line and the column
    (the byte offset in that line, 1-based), not a traceback; a missing file raises
    ``FileNotFoundError`` for the caller to word.
    """
    p = Path(path)
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(
            f"{p}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
            f"save the {what} as UTF-8"
        ) from None


__all__ = ["read_utf8"]
