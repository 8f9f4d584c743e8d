"""The atomic writers and readers of run folders (they live in :mod:`selfimprove.runs.io`)."""

from selfimprove.runs.io import (
    read_json,
    read_jsonl,
    write_bytes_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)

__all__ = [
    "read_json",
    "read_jsonl",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_jsonl_atomic",
    "write_text_atomic",
]
