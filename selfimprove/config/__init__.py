"""Config loading shared by every job: YAML with file:line errors, ``key.sub=value`` overrides,
"did you mean" suggestions, validated against a pydantic schema (see :mod:`selfimprove.config.loader`)."""

from selfimprove.config.loader import (
    KeySource,
    Section,
    apply_overrides,
    check_kwargs,
    load,
    parse_override,
    read_yaml,
    suggest,
    validate,
)

__all__ = [
    "KeySource",
    "Section",
    "apply_overrides",
    "check_kwargs",
    "load",
    "parse_override",
    "read_yaml",
    "suggest",
    "validate",
]
