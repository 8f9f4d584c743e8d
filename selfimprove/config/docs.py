"""Config reference tables generated from a schema (for the docs; library code does not import this).

``schema_markdown(Schema)`` is a Markdown table of every key: path, type, default, description.
``update_docs(path, Schema)`` rewrites the table between the ``<!-- schema:start ... -->`` and
``<!-- schema:end -->`` markers of a Markdown page, so a test can check the page is current.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from selfimprove.config.loader import model_in


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(typing.get_origin(a) is list for a in typing.get_args(annotation))


def iter_fields(
    schema: type[BaseModel], prefix: str = "", *, inline: Sequence[type[BaseModel]] = ()
) -> Iterable[tuple[str, Any, Any, str]]:
    """Yield (key path, type, default, description) for every key of ``schema``, depth first.

    A nested model is a "section" row followed by its keys, except the models in ``inline``
    (list items, optional sub-configs): those get a key row with their default, then their keys
    below it (list items as ``key[].sub``).
    """
    for name, field in schema.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        sub = model_in(field.annotation)
        if sub is not None and sub not in inline:
            yield path, "section", None, field.description or ""
            yield from iter_fields(sub, path, inline=inline)
            continue
        if field.default_factory is not None:
            try:
                default = field.default_factory()
            except TypeError:
                default = None
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            elif isinstance(default, list):
                default = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in default]
        elif field.is_required():
            default = "(required)"
        else:
            default = field.default
        yield path, _type_name(field.annotation), default, field.description or ""
        if sub is not None:  # list items / optional sections documented below their key
            item_prefix = f"{path}[]" if _is_list(field.annotation) else path
            yield from iter_fields(sub, item_prefix, inline=inline)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    if text is None:
        # Drop module prefixes (typing., selfimprove.loop.config., __main__.) from class names.
        text = re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*)", "", str(annotation))
    return text


def schema_markdown(schema: type[BaseModel], *, inline: Sequence[type[BaseModel]] = ()) -> str:
    """A Markdown table of every config key of ``schema``: path, type, default, description."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for path, typ, default, desc in iter_fields(schema, inline=inline):
        if typ == "section":
            rows.append(f"| **`{path}`** | section | | {desc} |")
            continue
        shown = "null" if default is None else json.dumps(default)
        rows.append(f"| `{path}` | `{typ.replace('|', 'or')}` | `{shown}` | {desc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def update_docs(path: str | Path, schema: type[BaseModel], *, inline: Sequence[type[BaseModel]] = ()) -> bool:
    """Rewrite the schema table between the ``schema:start`` / ``schema:end`` markers; True if changed."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    start = text.index("<!-- schema:start")
    start = text.index("-->", start) + 3
    end = text.index("<!-- schema:end -->")
    new = text[:start] + "\n" + schema_markdown(schema, inline=inline) + text[end:]
    if new != text:
        p.write_text(new, encoding="utf-8")
    return new != text


__all__ = ["iter_fields", "schema_markdown", "update_docs"]
