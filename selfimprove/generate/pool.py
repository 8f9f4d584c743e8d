"""Generators a job needs, each built on first use and closed together (engine start-up is slow)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from selfimprove.generate.base import Generator


class EnginePool:
    """Engines by name, built lazily: a resumed job whose generation is done never starts one.

    ``given`` engines (by name) are used as they are and are the caller's to close; the pool closes
    only what it built. ``log`` is told when an engine starts.
    """

    def __init__(
        self, given: Mapping[str, Generator] | None = None, log: Callable[[str], None] | None = None
    ) -> None:
        self.given = {k: v for k, v in (given or {}).items() if v is not None}
        self.built: dict[str, Generator] = {}
        self._log = log or (lambda _msg: None)

    def get(self, name: str, backend: str, model: str, options: Mapping[str, Any] | None = None) -> Generator:
        """The engine called ``name``: the given one, the one built earlier, or a new one."""
        if name in self.given:
            return self.given[name]
        if name not in self.built:
            from selfimprove.generate import build_generator

            self._log(f"starting the {backend} generator on {model}")
            self.built[name] = build_generator(backend, model, **dict(options or {}))
        return self.built[name]

    def release(self, name: str) -> None:
        """Close the engine called ``name`` now (to free its memory), if the pool built it."""
        gen = self.built.pop(name, None)
        if gen is not None:
            gen.close()

    def close(self) -> None:
        """Close every engine the pool built."""
        for name in list(self.built):
            self.release(name)
