"""Final-answer extraction, normalisation and equivalence.

Every extractor maps a completion to its normalised final answer, or ``None`` when no answer can
be found: never an exception, never a silent "wrong" answer. Only the last ``MAX_CHARS``
characters of a completion are examined (final answers sit at the end) and every built-in pattern
is linear or bounded, so adversarial inputs cost bounded time.
"""

from __future__ import annotations

import importlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any

from selfimprove.errors import ConfigError
from selfimprove.registry import build_registered

# Only the tail of a completion is searched: bounds the cost of every extractor on huge inputs.
MAX_CHARS = 4096
# A final answer longer than this is treated as "no answer" (a run-away span, not an answer).
MAX_ANSWER_CHARS = 512

Extractor = Callable[[str], "str | None"]

_WS = re.compile(r"\s+")
_NUMBER_FULL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_NUMBER_ANY = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}$")
# The marker only: the span after the *last* marker is read separately (a pattern that also
# consumed the span would skip a later "the answer is" inside it).
_ANSWER_IS = re.compile(r"answer\s{0,8}(?:is|:|=)\s{0,8}:?", re.IGNORECASE)


def _tail(text: Any) -> str:
    """The part of ``text`` that extractors look at (a string, at most ``MAX_CHARS`` long)."""
    if not isinstance(text, str):
        return ""
    return text[-MAX_CHARS:]


def _canonical_number(s: str) -> str | None:
    """'1,000' -> '1000', '3.0' -> '3', '+2.50' -> '2.5', '-0' -> '0'; None if not a plain number."""
    if len(s) > 64 or not _NUMBER_FULL.fullmatch(s):
        return None
    s = s.replace(",", "").lstrip("+")
    neg = s.startswith("-")
    s = s.lstrip("-")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s.startswith("."):
        s = "0" + s
    s = s.lstrip("0") or "0"
    if s.startswith("."):
        s = "0" + s
    if s == "0":
        return "0"
    return "-" + s if neg else s


def normalize_answer(answer: Any) -> str | None:
    """Canonical form of an answer: trimmed, whitespace unified, wrappers and trailing period gone.

    Plain numbers are canonicalised ("1,000" -> "1000", "3.0" -> "3"). Returns None for None, a
    non-string, or an answer that is empty after normalisation.
    """
    if answer is None:
        return None
    if not isinstance(answer, str):
        answer = str(answer)
    s = _WS.sub(" ", answer).strip()
    # Peel wrappers repeatedly: "$\boxed{5}$." -> "5". Bounded: every pass shortens the string.
    for _ in range(8):
        before = s
        s = s.strip().rstrip(".").strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**")):
            if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
        if s.startswith("\\boxed{") and s.endswith("}"):
            inner = _braced(s, len("\\boxed{") - 1)
            if inner is not None and len(inner) == len(s) - len("\\boxed{}"):
                s = inner.strip()
        m = _TEXT_WRAP.match(s)
        if m:
            s = m.group(1).strip()
        if s == before:
            break
    if not s:
        return None
    num = _canonical_number(s)
    return num if num is not None else s


def _braced(text: str, open_idx: int) -> str | None:
    """The content of the brace group opening at ``text[open_idx] == '{'`` (None if unbalanced)."""
    depth = 0
    for i in range(open_idx, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i]
    return None


def _finish(raw: str | None, normalize: bool) -> str | None:
    """Apply normalisation and the answer-length cap to a raw extracted span."""
    if raw is None:
        return None
    if len(raw) > MAX_ANSWER_CHARS:
        return None
    if normalize:
        return normalize_answer(raw)
    raw = raw.strip()
    return raw or None


def extract_boxed(text: str, *, normalize: bool = True) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched; None if none."""
    t = _tail(text)
    best = -1
    for marker in ("\\boxed", "\\fbox"):
        best = max(best, t.rfind(marker))
    # Walk back over candidates until one has a balanced group (the last may be cut off); at most
    # 32 candidates, so a flood of unbalanced boxes costs O(32 * MAX_CHARS).
    tries = 0
    while best >= 0 and tries < 32:
        tries += 1
        marker_len = len("\\boxed") if t.startswith("\\boxed", best) else len("\\fbox")
        j = best + marker_len
        while j < len(t) and t[j] == " ":
            j += 1
        if j < len(t) and t[j] == "{":
            inner = _braced(t, j)
            if inner is not None:
                return _finish(inner, normalize)
        elif j < len(t) and marker_len == len("\\boxed"):
            # "\boxed 5": a single token after a space.
            m = re.match(r"[^\s$]{1,64}", t[j:])
            if m:
                return _finish(m.group(0), normalize)
        prev = max(t.rfind("\\boxed", 0, best), t.rfind("\\fbox", 0, best))
        best = prev
    return None


def extract_answer_is(text: str, *, normalize: bool = True) -> str | None:
    """The span after the last "the answer is" / "answer:" up to the end of its sentence."""
    t = _tail(text)
    last = None
    for m in _ANSWER_IS.finditer(t):
        last = m
    if last is None:
        return None
    span = t[last.end() : last.end() + 300].split("\n", 1)[0]
    boxed = extract_boxed(span, normalize=normalize)
    if boxed is not None:
        return boxed
    # End of sentence: a period followed by a space (keeps decimals like 3.5 intact).
    cut = re.search(r"\.(?:\s|$)", span)
    if cut:
        span = span[: cut.start()]
    return _finish(span, normalize)


def extract_last_number(text: str, *, normalize: bool = True) -> str | None:
    """The last number in the text ("1,000", "-3.5", "2/3"); None if there is none."""
    t = _tail(text)
    last = None
    for m in _NUMBER_ANY.finditer(t):
        last = m
    if last is None:
        return None
    return _finish(last.group(0), normalize)


def make_choice_extractor(letters: str = "ABCDE") -> Extractor:
    """An extractor for a multiple-choice letter among ``letters`` (upper-cased in the result)."""
    letters = "".join(dict.fromkeys(letters.upper()))
    if not letters or not all(c.isalpha() and c.isascii() for c in letters):
        raise ConfigError(f"extractor 'choice': letters must be ASCII letters, got {letters!r}")
    cls = f"[{re.escape(letters)}{re.escape(letters.lower())}]"
    alone = re.compile(rf"^\(?({cls})\)?(?:[\s.:,)]|$)")
    paren = re.compile(rf"\(({cls})\)")
    whole = re.compile(rf"^\W{{0,4}}({cls})\W{{0,4}}$")

    def choice(text: str) -> str | None:
        t = _tail(text)
        for span in (extract_answer_is(t, normalize=False), extract_boxed(t, normalize=False)):
            if span:
                m = alone.match(span.strip().strip("$*").strip())
                if m:
                    return m.group(1).upper()
        m = whole.match(t.strip())
        if m:
            return m.group(1).upper()
        last = None
        for last in paren.finditer(t):  # noqa: B007 - keep the last match
            pass
        if last is not None:
            return last.group(1).upper()
        return None

    choice.__name__ = "choice"
    return choice


def make_regex_extractor(
    pattern: str, group: int | str = 1, *, which: str = "last", flags: str = "", normalize: bool = True
) -> Extractor:
    """An extractor returning ``group`` of the ``which`` ("first"/"last") match of ``pattern``.

    Runs on the last ``MAX_CHARS`` characters only, which bounds the cost of a user pattern.
    """
    if which not in ("first", "last"):
        raise ConfigError(f"extractor 'regex': which must be 'first' or 'last', got {which!r}")
    flag_map = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
    bad = [f for f in flags if f not in flag_map]
    if bad:
        raise ConfigError(f"extractor 'regex': unknown flags {bad!r} (allowed: i, m, s)")
    fl = 0
    for f in flags:
        fl |= flag_map[f]
    try:
        rx = re.compile(pattern, fl)
    except (re.error, TypeError) as exc:
        raise ConfigError(f"extractor 'regex': invalid pattern {pattern!r}: {exc}") from None
    if rx.groups == 0:
        group = 0
    elif isinstance(group, int) and not 0 <= group <= rx.groups:
        raise ConfigError(f"extractor 'regex': group {group} out of range (pattern has {rx.groups})")
    elif isinstance(group, str) and group not in rx.groupindex:
        raise ConfigError(f"extractor 'regex': no group named {group!r} in {pattern!r}")

    def regex(text: str) -> str | None:
        t = _tail(text)
        if which == "first":
            m = rx.search(t)
        else:
            m = None
            for m in rx.finditer(t):  # noqa: B007 - keep the last match
                pass
        if m is None:
            return None
        return _finish(m.group(group), normalize)

    regex.__name__ = "regex"
    return regex


def make_json_field_extractor(field: str, *, normalize: bool = True) -> Extractor:
    """An extractor reading ``field`` (dotted path "a.b") from the last JSON object in the text."""
    if not isinstance(field, str) or not field:
        raise ConfigError(f"extractor 'json_field': field must be a non-empty string, got {field!r}")
    path = field.split(".")
    decoder = json.JSONDecoder()

    def json_field(text: str) -> str | None:
        t = _tail(text)
        pos = len(t)
        # Try at most 64 '{' positions from the end; a valid object at the end wins.
        for _ in range(64):
            pos = t.rfind("{", 0, pos)
            if pos < 0:
                return None
            try:
                obj, _end = decoder.raw_decode(t, pos)
            except (ValueError, RecursionError):
                continue
            value: Any = obj
            for key in path:
                if isinstance(value, dict) and key in value:
                    value = value[key]
                else:
                    value = None
                    break
            if value is None:
                continue
            if isinstance(value, str):
                return _finish(value, normalize)
            if isinstance(value, bool):
                return _finish(str(value).lower(), normalize)
            if isinstance(value, (int, float)):
                return _finish(repr(value), normalize)
            return _finish(json.dumps(value, sort_keys=True), normalize)
        return None

    json_field.__name__ = "json_field"
    return json_field


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` (a user extractor or reward)."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"callable must be given as 'module:function', got {spec!r}")
    mod_name, func_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {mod_name!r} of {spec!r}: {exc}") from None
    func = getattr(mod, func_name, None)
    if not callable(func):
        raise ConfigError(f"{spec!r}: module {mod_name!r} has no callable {func_name!r}")
    return func


def make_callable_extractor(path: str, *, normalize: bool = True) -> Extractor:
    """Wrap a user function ``text -> str | None``; its exceptions and non-strings become None."""
    func = load_callable(path)

    def user_extractor(text: str) -> str | None:
        try:
            out = func(_tail(text))
        except Exception:  # a user extractor failing on one completion is "no answer", not a crash
            return None
        if out is None:
            return None
        return _finish(str(out), normalize)

    user_extractor.__name__ = path.split(":")[1]
    return user_extractor


def _simple(func: Callable[..., str | None], name: str) -> Callable[..., Extractor]:
    def factory(*, normalize: bool = True) -> Extractor:
        def extractor(text: str) -> str | None:
            return func(text, normalize=normalize)

        extractor.__name__ = name
        return extractor

    return factory


# name -> factory(**options) -> extractor
EXTRACTORS: dict[str, Callable[..., Extractor]] = {
    "boxed": _simple(extract_boxed, "boxed"),
    "answer_is": _simple(extract_answer_is, "answer_is"),
    "last_number": _simple(extract_last_number, "last_number"),
    "choice": make_choice_extractor,
    "regex": make_regex_extractor,
    "json_field": make_json_field_extractor,
    "callable": make_callable_extractor,
}


def get_extractor(name: str | Callable[[str], str | None], **options: Any) -> Extractor:
    """Build an extractor by registry name, ``"module:function"``, or pass a callable through."""
    if callable(name):
        if options:
            raise ConfigError(f"extractor options {sorted(options)} given with a callable extractor")
        return name
    if not isinstance(name, str):
        raise ConfigError(f"extractor must be a name or a callable, got {type(name).__name__}")
    if ":" in name:
        return make_callable_extractor(name, **options)
    return build_registered("extractor", EXTRACTORS, name, user_callables=True, **options)


def _math_equal(a: str, b: str) -> bool:
    """Equivalence through math-verify; any parser failure or timeout counts as not equal."""
    from math_verify import parse, verify  # a dependency: a broken install fails here, loudly

    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        ga = parse(_as_math(a), parsing_timeout=timeout)
        gb = parse(_as_math(b), parsing_timeout=timeout)
        if not ga or not gb:
            return False
        return bool(verify(ga, gb, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a parse failure is "not shown equal"
        return False


def _as_math(s: str) -> str:
    """Wrap a bare LaTeX expression in $...$ so math-verify's LaTeX parser sees it."""
    if "$" in s or "\\(" in s or "\\[" in s:
        return s
    return f"${s}$"


def answers_equal(a: Any, b: Any, *, math: bool = False) -> bool:
    """Whether two answers are the same after normalisation (or, with ``math``, via math-verify).

    None is never equal to anything (an unextractable answer is never "right").
    """
    na, nb = normalize_answer(a), normalize_answer(b)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    if not math:
        return False
    if len(na) > MAX_ANSWER_CHARS or len(nb) > MAX_ANSWER_CHARS:
        return False
    return _math_equal(na, nb)
