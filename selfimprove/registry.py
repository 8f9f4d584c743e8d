"""Building a component by its registry name (extractors, rewards, judges), with config errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from selfimprove.errors import ConfigError

T = TypeVar("T")


def build_registered(
    kind: str,
    registry: Mapping[str, Callable[..., T]],
    name: str,
    *args: Any,
    user_callables: bool = False,
    **options: Any,
) -> T:
    """Call ``registry[name](*args, **options)``; an unknown name or bad options is a ConfigError.

    ``user_callables`` adds "or 'module:function'" to the allowed names in the message (the caller
    resolves such names itself before calling this).
    """
    factory = registry.get(name)
    if factory is None:
        allowed = ", ".join(sorted(registry)) + (" or 'module:function'" if user_callables else "")
        raise ConfigError(f"unknown {kind} {name!r}; allowed: {allowed}")
    try:
        return factory(*args, **options)
    except TypeError as exc:
        raise ConfigError(f"{kind} {name!r}: bad options {sorted(options)}: {exc}") from None
