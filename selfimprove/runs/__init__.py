"""Run folders every job shares: atomic writes, lock, manifest, state of finished stages, reports."""

from selfimprove.runs.folder import RunState, folder_lock, open_state, package_versions, write_manifest
from selfimprove.runs.io import (
    atomic_dir,
    read_json,
    read_jsonl,
    write_bytes_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)

__all__ = [
    "RunState",
    "atomic_dir",
    "folder_lock",
    "open_state",
    "package_versions",
    "read_json",
    "read_jsonl",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_jsonl_atomic",
    "write_manifest",
    "write_text_atomic",
]
