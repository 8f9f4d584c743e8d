"""The run folder of a self-training run: its stages, state.json, manifest, and the checks before a start.

A start is checked before anything is written (``check_run_dir``), recorded under the folder's lock
(``prepare_run_dir``: config.yaml, manifest.json, state.json), and undone when it failed before
computing anything (``StartRecord``).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import ConfigError
from selfimprove.loop.config import RunConfig, dump_config
from selfimprove.runs.folder import LOCK_FILE, HeldLock, busy_error, lock_holder, write_manifest
from selfimprove.runs.folder import RunState as FolderState
from selfimprove.runs.io import write_bytes_atomic, write_text_atomic

STAGES = ("generate", "score", "build", "train", "evaluate", "metrics")


STATE_FILE = "state.json"


def round_dir(run_dir: Path, r: int) -> Path:
    """The folder of round ``r`` (round 0 is the base model's evaluation)."""
    return run_dir / f"round_{r:02d}"


class RunState(FolderState):
    """``state.json`` of a self-training run: finished stages per round, the current adapter, guard events."""

    @classmethod
    def new(cls, path: Path, fingerprint: str) -> RunState:  # type: ignore[override]
        """A fresh state for a new run."""
        return super().new(path, fingerprint, STAGES, adapter=None, stopped=None, guard=[], rollbacks=0)

    @classmethod
    def load(cls, path: Path) -> RunState:  # type: ignore[override]
        """Read an existing state.json."""
        return super().load(path, STAGES)


def resolve_run_dir(config: RunConfig, run_dir: str | Path | None) -> Path:
    """``run_dir`` if given, else ``output.run_dir``, else ``runs/<name>``."""
    if run_dir is not None:
        return Path(run_dir)
    if config.output.run_dir:
        return Path(config.output.run_dir)
    return Path("runs") / config.name


def write_run_manifest(
    run_dir: Path, config: RunConfig, command: Sequence[str] | None, resumed: bool
) -> None:
    fields = {
        "name": config.name,
        "config_hash": config.fingerprint(),
        "supervised": config.supervised,
        "seeds": {"loop": config.loop.seed, "task": config.task.seed},
    }
    write_manifest(run_dir, fields, command=command, resumed=resumed)


# Files every start writes (the record of the start, not results).
START_FILES = ("config.yaml", "manifest.json", "state.json", LOCK_FILE)


class StartRecord:
    """A run folder as it was before a start wrote to it, to undo a start that computed nothing.

    Every check that can be made before writing is made before writing; this covers what can only
    fail later (an engine that does not start, a server that refuses the first request). When no
    result file appeared or changed, the folder gets back exactly what it held: a new folder is
    removed (so the corrected rerun is not refused), an existing one keeps its previous config,
    manifest, state and lock file byte for byte.
    """

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.existed = run_dir.is_dir()
        self.saved = {
            name: (run_dir / name).read_bytes() for name in START_FILES if (run_dir / name).is_file()
        }
        self.results, self.folders = self._listing()

    def _listing(self) -> tuple[dict[str, tuple[int, int]], set[str]]:
        files: dict[str, tuple[int, int]] = {}
        folders: set[str] = set()
        if not self.dir.is_dir():
            return files, folders
        for path in self.dir.rglob("*"):
            rel = path.relative_to(self.dir).as_posix()
            if path.is_dir():
                folders.add(rel)
            elif rel not in START_FILES and not (path.name.startswith(".") and path.name.endswith(".tmp")):
                st = path.stat()
                files[rel] = (st.st_size, st.st_mtime_ns)
        return files, folders

    def computed_nothing(self) -> bool:
        """Whether no result file appeared or changed since the record was taken."""
        return self._listing()[0] == self.results

    def undo(self, lock: HeldLock | None) -> None:
        """Put the folder back as it was (call only when :meth:`computed_nothing`)."""
        if not self.existed:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for name in START_FILES:
            path = self.dir / name
            if name == LOCK_FILE and name in self.saved:
                if lock is not None:
                    lock.restore = True  # written back through the held descriptor
            elif name in self.saved:
                write_bytes_atomic(path, self.saved[name])
            else:
                path.unlink(missing_ok=True)
        _, folders = self._listing()
        for rel in sorted(folders - self.folders, key=len, reverse=True):
            with contextlib.suppress(OSError):
                (self.dir / rel).rmdir()  # only new, empty folders (a stage's output folder)


def given_objects(task: Any = None, rewards: Sequence[Any] | None = None) -> dict[str, Any]:
    """What identifies the ``task`` / ``rewards`` objects given to ``run()`` instead of config keys.

    They are not part of the config's hash, so a run records these names (``state.json``,
    ``given``) and a resume with other ones is refused like a changed config. A task is named by
    its class and ``name``; a reward by its function's module and qualified name, and its weight.
    """
    out: dict[str, Any] = {}
    if task is not None:
        out["task"] = f"{_qualname(type(task))} {getattr(task, 'name', '')}".rstrip()
    if rewards is not None:
        named = []
        for item in rewards:
            fn, weight = item if isinstance(item, tuple) else (item, 1.0)
            named.append(f"{_qualname(fn)} x {float(weight):g}")
        out["rewards"] = named
    return out


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def check_run_dir(
    config: RunConfig, run_dir: Path, resume: bool, force: bool, given: Mapping[str, Any] | None = None
) -> RunState | None:
    """Whether this start may use ``run_dir`` (the existing run's state, or None for a new run).

    ``given``: ``given_objects(task, rewards)`` of a ``run()`` call. Reads only: a refused start
    leaves the folder as it was.
    """
    holder = lock_holder(run_dir)
    if holder is not None:
        raise busy_error(run_dir, holder)
    return check_run_dir_contents(config, run_dir, resume, force, given)


def check_run_dir_contents(
    config: RunConfig, run_dir: Path, resume: bool, force: bool, given: Mapping[str, Any] | None = None
) -> RunState | None:
    # Not lock_holder here: called under our own lock, whose file must not be opened and closed
    # again (closing any descriptor of a file drops the process's POSIX locks on it).
    state_path = run_dir / STATE_FILE
    if state_path.exists():
        if not resume:
            raise ConfigError(
                f"run folder {run_dir} already holds a run; pass --resume to continue it, "
                "or choose another --run-dir"
            )
        state = RunState.load(state_path)
        fingerprint = config.fingerprint()
        if state.data.get("fingerprint") != fingerprint and not force:
            raise ConfigError(
                f"the config differs from the one {run_dir} was started with "
                f"(hash {fingerprint} vs {state.data.get('fingerprint')}); compare with "
                f"{run_dir / 'config.yaml'}; pass --force to resume with the new config anyway"
            )
        recorded, now = state.data.get("given", {}), dict(given or {})
        if recorded != now and not force:
            detail = "; ".join(
                f"{k}: {now.get(k, 'none (config keys)')} vs {recorded.get(k, 'none (config keys)')}"
                for k in sorted(set(recorded) | set(now))
                if now.get(k) != recorded.get(k)
            )
            raise ConfigError(
                f"run() was given other objects than the ones {run_dir} was started with ({detail}; "
                "this start vs the recorded one); pass force=True to resume with them anyway"
            )
        return state
    if resume and run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise ConfigError(f"cannot resume {run_dir}: it has no {STATE_FILE} (not a run folder?)")
    return None


def prepare_run_dir(
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    force: bool,
    command: Sequence[str] | None,
    given: Mapping[str, Any] | None = None,
) -> RunState:
    """Check the folder again (now under its lock), then record this start: config, manifest, state."""
    state_path = run_dir / STATE_FILE
    fingerprint = config.fingerprint()
    state = check_run_dir_contents(config, run_dir, resume, force, given)
    if state is not None:
        if state.data.get("fingerprint") != fingerprint:  # --force: recorded only now, as the run starts
            state.data.setdefault("forced", []).append(
                {"from": state.data.get("fingerprint"), "to": fingerprint}
            )
            state.data["fingerprint"] = fingerprint
            state.data["finished"] = False
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = RunState.new(state_path, fingerprint)
    if given:
        state.data["given"] = dict(given)
    else:
        state.data.pop("given", None)
    write_text_atomic(run_dir / "config.yaml", dump_config(config))
    write_run_manifest(run_dir, config, command, resumed=resume and state_path.exists())
    state.save()
    return state
