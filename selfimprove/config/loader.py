"""YAML configs validated against a pydantic schema, with errors that say where and what.

One loader for every job: ``load(path, Schema, overrides)`` reads a YAML file, merges
command-line overrides (``key.sub=value``, the value parsed as YAML) and validates the result
against ``Schema``. Errors are :class:`~selfimprove.errors.ConfigError` messages that name the
YAML file and line (or the override), the key path (``training.lora.rank``), what is allowed,
and a "did you mean" suggestion. Schemas derive from :class:`Section`: unknown keys are errors,
not silently ignored settings.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from selfimprove.errors import ConfigError

KeyPath = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are rejected, assignments are validated."""

    # validate_assignment: overrides applied to a loaded config are checked too.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able dict with every key resolved (what a run folder's ``config.yaml`` holds)."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------------------------


def _node_lines(node: yaml.Node | None, prefix: KeyPath = (), out: dict | None = None) -> dict[KeyPath, int]:
    """Map every key path in a composed YAML document to its 1-based line."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*prefix, key)] = key_node.start_mark.line + 1
            # A value on its own lines (a nested mapping/list) keeps the key's line as the anchor.
            _node_lines(value_node, (*prefix, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*prefix, i)] = item.start_mark.line + 1
            _node_lines(item, (*prefix, i), out)
    return out


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """The mapping in a YAML file and the line of every key path; errors name file:line:column."""
    from selfimprove.textio import read_utf8

    path = Path(path)
    try:
        text = read_utf8(path, "config", error=ConfigError)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of sections, got {type(data).__name__}")
    return data, _node_lines(node)


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """Split ``key.sub=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value (e.g. training.lora.rank=8)")
    key, _, raw = text.partition("=")
    key = key.strip()
    parts = tuple(key.split("."))
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {text!r}: the key {key!r} is not a dotted key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {exc}") from None
    return parts, value


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str]
) -> tuple[dict[str, Any], dict[KeyPath, str]]:
    """Return a copy of ``data`` with the overrides set, and a map key path -> the override text."""
    data = copy.deepcopy(data)
    sources: dict[KeyPath, str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = {}
                node[part] = child
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = value
        sources[parts] = text
    return data, sources


# ---------------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------------


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside a field annotation (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = model_in(arg)
        if found is not None:
            return found
    return None


def model_at(schema: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model class of ``schema`` that owns the mapping at key path ``loc``."""
    model: type[BaseModel] | None = schema
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = model_in(field.annotation)
    return model


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_key_path(loc: Sequence[str | int]) -> str:
    """``("a", "b", 0, "c")`` -> ``a.b[0].c``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _data_path(data: Any, loc: Sequence[Any]) -> tuple[Any, ...]:
    """Keep only the parts of a pydantic error location that exist in the input data.

    Pydantic adds union member tags (``str``, ``list[str]``) to locations; they are not keys.
    """
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(part, str) and node is not None and not isinstance(node, (dict, list)):
            continue  # a union tag under a scalar
        elif isinstance(node, dict) and isinstance(part, str) and "[" not in part and "-" not in part:
            path.append(part)  # a missing key (e.g. a required field)
            node = None
        else:
            continue
    return tuple(path)


class KeySource:
    """Finds the file:line (or the override) that set a key path; called as a message prefix."""

    def __init__(
        self,
        file: Path | None,
        lines: Mapping[KeyPath, int] | None = None,
        overrides: Mapping[KeyPath, str] | None = None,
    ):
        self.file, self.lines, self.overrides = file, lines or {}, overrides or {}

    def source(self, path: Sequence[Any], fallback: bool = True) -> str:
        """What set ``path``: a command-line override, ``file:line``, else the file (``fallback``) or "".

        An error about a whole section (a check across its keys) that a command-line override
        took part in names that override first, with the file's line beside it.
        """
        path = tuple(path)
        found = ""
        for n in range(len(path), 0, -1):
            prefix = path[:n]
            str_prefix = tuple(str(p) for p in prefix)
            if str_prefix in self.overrides and all(isinstance(p, str) for p in prefix):
                return f"command-line override {self.overrides[str_prefix]!r}"
            if prefix in self.lines and self.file is not None:
                found = f"{self.file}:{self.lines[prefix]}"
                break
        if not found and fallback and self.file is not None:
            found = str(self.file)
        inside = [
            text for key, text in self.overrides.items() if len(key) > len(path) and key[: len(path)] == path
        ]
        if inside and path:
            names = " and ".join(repr(text) for text in inside)
            return f"command-line override {names}" + (f" (with {found})" if found else "")
        return found

    def __call__(self, path: Sequence[Any]) -> str:
        found = self.source(path)
        return f"{found}: " if found else ""


def _describe_error(
    err: Mapping[str, Any], data: dict[str, Any], where: KeySource, schema: type[BaseModel]
) -> str:
    path = _data_path(data, err["loc"])
    key = format_key_path(path)
    etype = err["type"]
    prefix = where(path)
    if etype == "extra_forbidden":
        owner = model_at(schema, [p for p in path[:-1]])
        allowed = sorted(owner.model_fields) if owner else []
        hint = suggest(path[-1], allowed) if path else ""
        return f"{prefix}{key}: unknown key{hint}; allowed here: {', '.join(allowed)}"
    if etype == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'\"") for c in expected.replace(" or ", ",").split(",") if c.strip()]
        hint = suggest(err.get("input"), choices)
        return f"{prefix}{key}: {err.get('input')!r} is not allowed; allowed: {expected}{hint}"
    if etype == "missing":
        return f"{prefix}{key}: required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or etype.startswith("value_error") else f" (got {got!r})"
    return f"{prefix}{key}: {msg}{shown}"


def validation_message(
    exc: ValidationError, data: dict[str, Any], where: KeySource, schema: type[BaseModel]
) -> str:
    """One line per problem of a pydantic ValidationError, each with its file:line and key path."""
    msgs: list[str] = []
    by_path: dict[tuple[Any, ...], int] = {}
    for err in exc.errors():
        m = _describe_error(err, data, where, schema)
        path = _data_path(data, err["loc"])
        if path in by_path:
            # A union type fails once per member: one line listing every accepted form.
            i = by_path[path]
            extra = m[len(where(path)) + len(format_key_path(path)) + 2 :]
            if extra not in msgs[i]:
                msgs[i] = f"{msgs[i]}; or {extra}"
            continue
        by_path[path] = len(msgs)
        msgs.append(m)
    head = "invalid config" if len(msgs) == 1 else f"invalid config ({len(msgs)} problems)"
    return head + ":\n  " + "\n  ".join(msgs)


def check_kwargs(
    func: Any, options: Mapping[str, Any], key: str, where: KeySource, skip: Iterable[str] = ()
) -> None:
    """Reject option names that ``func`` does not accept (unless it takes ``**kwargs``)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and n not in set(skip)
    ]
    for name in options:
        if name not in allowed:
            path = (*key.split("."), name)
            raise ConfigError(
                f"{where(path)}{key}.{name}: unknown option of {func.__name__}{suggest(name, allowed)}; "
                f"allowed: {', '.join(allowed)}"
            )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def validate(
    schema: type[M],
    data: Mapping[str, Any],
    *,
    file: str | Path | None = None,
    lines: Mapping[KeyPath, int] | None = None,
    overrides: Sequence[str] = (),
    check: Callable[[M, KeySource], None] | None = None,
) -> M:
    """Validate a plain dict (plus ``key.sub=value`` overrides) into ``schema``.

    ``check(config, where)`` runs after validation for checks that need other modules; it
    raises ConfigError messages prefixed with ``where(key_path)``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file or 'config'}: the config must be a mapping, got {type(data).__name__}")
    merged, sources = apply_overrides(dict(data), overrides)
    where = KeySource(Path(file) if file is not None else None, lines or {}, sources)
    try:
        cfg = schema.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, merged, where, schema)) from None
    if check is not None:
        check(cfg, where)
    return cfg


def load(
    path: str | Path,
    schema: type[M],
    overrides: Sequence[str] = (),
    *,
    check: Callable[[M, KeySource], None] | None = None,
) -> M:
    """Read a YAML file, merge overrides into it and validate it into ``schema``."""
    p = Path(path)
    data, lines = read_yaml(p)
    return validate(schema, data, file=p, lines=lines, overrides=overrides, check=check)


def load_named(
    source: str | Path | Mapping[str, Any],
    schema: type[M],
    overrides: Sequence[str] = (),
    *,
    check: Callable[[M, KeySource], None] | None = None,
    default_name: str = "config",
) -> M:
    """A config with a ``name`` key from a YAML file (``load``) or a dict (``validate``).

    A config that sets no ``name`` takes the file's stem, or ``default_name`` for a dict.
    """
    if isinstance(source, Mapping):
        cfg, name = validate(schema, source, overrides=overrides, check=check), default_name
    else:
        cfg, name = load(source, schema, overrides, check=check), Path(source).stem
    if getattr(cfg, "name", None) is None:
        cfg = cfg.model_copy(update={"name": name})
    return cfg


def dump_yaml(cfg: BaseModel) -> str:
    """A resolved config as YAML text (every key, defaults filled in, in schema order)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


__all__ = [
    "KeyPath",
    "KeySource",
    "Section",
    "apply_overrides",
    "check_kwargs",
    "dump_yaml",
    "format_key_path",
    "load",
    "load_named",
    "model_at",
    "model_in",
    "parse_override",
    "read_yaml",
    "suggest",
    "validate",
    "validation_message",
]
