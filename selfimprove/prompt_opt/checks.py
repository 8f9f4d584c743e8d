"""A rule-based checker of answers: format, length, required and forbidden content.

The bundled prompt-optimization tasks state requirements a program can check, so that a run's
held-out check (and the benchmark) measures whether an optimized prompt really makes answers meet
them. Use it from a task file::

    heldout:
      enabled: true
      checker:
        function: selfimprove.prompt_opt.checks:check_answer
        options: {max_words: 15, format: one_line}

Every rule is optional; an answer passes when it breaks none. ``answer_problems`` lists the broken
rules (for reports).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from selfimprove.errors import ConfigError

FORMATS = ("json", "bullets", "one_line", "number")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+\S")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```$", re.DOTALL)
# option name -> accepted types
_OPTIONS: dict[str, tuple[type, ...]] = {
    "max_words": (int,),
    "min_words": (int,),
    "max_chars": (int,),
    "format": (str,),
    "json_keys": (list,),
    "exact_keys": (bool,),
    "bullets": (int,),
    "required": (list,),
    "forbidden": (list,),
    "starts_with": (str,),
    "ends_with": (str,),
    "pattern": (str,),
    "case_sensitive": (bool,),
    "allow_code_fence": (bool,),
}


def check_options(options: Mapping[str, Any]) -> None:
    """Raise ConfigError for an unknown option, a wrong type or an unknown format."""
    for name, value in options.items():
        if name not in _OPTIONS:
            import difflib

            close = difflib.get_close_matches(name, list(_OPTIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{name!r} is not an option of check_answer{hint}; allowed: {', '.join(_OPTIONS)}"
            )
        types = _OPTIONS[name]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ConfigError(f"{name} must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
    fmt = options.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if "pattern" in options:
        try:
            re.compile(options["pattern"])
        except re.error as exc:
            raise ConfigError(f"pattern is not a regular expression: {exc}") from None


def _contains(text: str, needle: str, case_sensitive: bool) -> bool:
    if case_sensitive:
        return needle in text
    return needle.lower() in text.lower()


def _words(text: str) -> int:
    return len(text.split())


def answer_problems(
    answer: str,
    *,
    question: str | None = None,
    max_words: int | None = None,
    min_words: int | None = None,
    max_chars: int | None = None,
    format: str | None = None,
    json_keys: Sequence[str] = (),
    exact_keys: bool = False,
    bullets: int | None = None,
    required: Sequence[str] = (),
    forbidden: Sequence[str] = (),
    starts_with: str | None = None,
    ends_with: str | None = None,
    pattern: str | None = None,
    case_sensitive: bool = False,
    allow_code_fence: bool = False,
) -> list[str]:
    """The rules ``answer`` breaks (empty: it passes). ``question`` is accepted and unused."""
    del question
    problems: list[str] = []
    text = (answer or "").strip()
    if not text:
        return ["empty answer"]
    if allow_code_fence:
        m = _FENCE.match(text)
        if m:
            text = m.group(1).strip()
    n_words = _words(text)
    if max_words is not None and n_words > max_words:
        problems.append(f"{n_words} words > {max_words}")
    if min_words is not None and n_words < min_words:
        problems.append(f"{n_words} words < {min_words}")
    if max_chars is not None and len(text) > max_chars:
        problems.append(f"{len(text)} characters > {max_chars}")
    lines = [line for line in text.splitlines() if line.strip()]
    if format == "one_line" and len(lines) != 1:
        problems.append(f"{len(lines)} lines, expected one")
    if format == "number" and not re.fullmatch(r"[-+]?\d+(?:[.,]\d+)?", text.rstrip(".")):
        problems.append("not a bare number")
    if format == "bullets" or bullets is not None:
        items = [line for line in lines if _BULLET.match(line)]
        if format == "bullets" and len(items) != len(lines):
            problems.append(f"{len(lines) - len(items)} line(s) are not bullet points")
        if bullets is not None and len(items) != bullets:
            problems.append(f"{len(items)} bullet points, expected {bullets}")
    if format == "json" or json_keys:
        try:
            obj = json.loads(text)
        except ValueError:
            problems.append("not valid JSON")
        else:
            if not isinstance(obj, dict):
                problems.append("JSON is not an object")
            else:
                missing = [k for k in json_keys if k not in obj]
                if missing:
                    problems.append(f"JSON lacks key(s) {missing}")
                extra = sorted(set(obj) - set(json_keys))
                if exact_keys and extra:
                    problems.append(f"JSON has extra key(s) {extra}")
    for needle in required:
        if not _contains(text, needle, case_sensitive):
            problems.append(f"lacks {needle!r}")
    for needle in forbidden:
        if _contains(text, needle, case_sensitive):
            problems.append(f"contains forbidden {needle!r}")
    if starts_with is not None:
        head = text if case_sensitive else text.lower()
        if not head.startswith(starts_with if case_sensitive else starts_with.lower()):
            problems.append(f"does not start with {starts_with!r}")
    if ends_with is not None:
        tail = text if case_sensitive else text.lower()
        if not tail.endswith(ends_with if case_sensitive else ends_with.lower()):
            problems.append(f"does not end with {ends_with!r}")
    if pattern is not None and re.search(pattern, text, 0 if case_sensitive else re.IGNORECASE) is None:
        problems.append(f"does not match {pattern!r}")
    return problems


def check_answer(answer: str, **options: Any) -> bool:
    """True when ``answer`` breaks none of the rules in ``options`` (see :func:`answer_problems`)."""
    return not answer_problems(answer, **options)


def reference_check(answer: str, reference: str) -> bool:
    """True when the reference occurs in the answer as whole words (case, spaces and punctuation ignored)."""

    def norm(s: str) -> str:
        return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())

    ref = norm(reference)
    # whole words only: the reference "4" does not occur in "14"
    return bool(ref) and f" {ref} " in f" {norm(answer or '')} "


__all__ = ["FORMATS", "answer_problems", "check_answer", "check_options", "reference_check"]
