"""Report primitives every job uses: Markdown and HTML tables, and a plain HTML page."""

from __future__ import annotations

import html
from collections.abc import Sequence

PAGE_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th{background:#f3f3f3}pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px;white-space:pre-wrap}"
)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; ``rows[0]`` is the header. Cells are used as given (escape ``|`` yourself)."""
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def html_table(rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; ``rows[0]`` is the header; cells are escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(title: str, body: str, css: str = PAGE_CSS) -> str:
    """A standalone HTML page around ``body`` (already HTML)."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{css}</style></head><body>{body}</body></html>"
    )


__all__ = ["PAGE_CSS", "html_page", "html_table", "markdown_table"]
