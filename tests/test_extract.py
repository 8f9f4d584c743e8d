"""Answer extraction, normalisation and equivalence: tables plus property tests."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfimprove.errors import ConfigError
from selfimprove.score.extract import (
    EXTRACTORS,
    MAX_CHARS,
    answers_equal,
    get_extractor,
    normalize_answer,
)

NORMALIZE = [
    ("  42 ", "42"),
    ("1,000", "1000"),
    ("1,234,567.50", "1234567.5"),
    ("3.0", "3"),
    ("+7", "7"),
    ("-0.0", "0"),
    ("007", "7"),
    (".5", "0.5"),
    ("Paris.", "Paris"),
    ("New   York\n City", "New York City"),
    ("$\\boxed{12}$.", "12"),
    ("\\text{blue}", "blue"),
    ("**B**", "B"),
    ("\\(x+1\\)", "x+1"),
    ("", None),
    ("   ", None),
    (None, None),
    (5, "5"),
    ("1,00", "1,00"),  # not a thousands-grouped number: left as text
]


@pytest.mark.parametrize("raw,expected", NORMALIZE)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


CASES = {
    "boxed": [
        ("so the result is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{1,000}", "1000"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5", "5"),
        ("unbalanced \\boxed{3} and \\boxed{4", "3"),
        ("no box here 12", None),
        ("", None),
    ],
    "answer_is": [
        ("Thus, the answer is 12.", "12"),
        ("The answer is: Paris.", "Paris"),
        ("Answer: 3.5", "3.5"),
        ("the answer is 3. Actually the answer is 4.", "4"),
        ("The final answer is $\\boxed{7}$.", "7"),
        ("ANSWER = 1,000\nmore text", "1000"),
        ("I do not know", None),
    ],
    "last_number": [
        ("2 apples and 3 pears make 5", "5"),
        ("costs 1,000 dollars", "1000"),
        ("temperature -3.50 today", "-3.5"),
        ("ratio 2/3", "2/3"),
        ("x = 3.0.", "3"),
        ("no digits", None),
    ],
    "choice": [
        ("The answer is (B).", "B"),
        ("the answer is c", "C"),
        ("\\boxed{D}", "D"),
        ("A", "A"),
        ("(E)", "E"),
        ("I pick (A) over (C)", "C"),
        ("A cat sat on the mat", None),
        ("The answer is F", None),
    ],
}


@pytest.mark.parametrize("name,text,expected", [(n, t, e) for n, rows in CASES.items() for t, e in rows])
def test_builtin_extractors(name, text, expected):
    assert get_extractor(name)(text) == expected


def test_regex_extractor():
    ex = get_extractor("regex", pattern=r"FINAL:\s*(\w+)")
    assert ex("FINAL: a ... FINAL: b") == "b"
    assert get_extractor("regex", pattern=r"FINAL:\s*(\w+)", which="first")("FINAL: a FINAL: b") == "a"
    assert get_extractor("regex", pattern=r"final:\s*(?P<x>\w+)", group="x", flags="i")("FINAL: z") == "z"
    assert get_extractor("regex", pattern=r"\d+")("a 12 b 13") == "13"  # no group: whole match
    assert ex("nothing") is None
    with pytest.raises(ConfigError, match="invalid pattern"):
        get_extractor("regex", pattern="(")
    with pytest.raises(ConfigError, match="group 3"):
        get_extractor("regex", pattern="(a)", group=3)
    with pytest.raises(ConfigError, match="flags"):
        get_extractor("regex", pattern="a", flags="q")


def test_json_field_extractor():
    ex = get_extractor("json_field", field="answer")
    assert ex('Reasoning... {"answer": "Paris", "why": "capital"}') == "Paris"
    assert ex('{"answer": 1} then {"answer": 2.0}') == "2"
    assert ex('```json\n{"answer": true}\n```') == "true"
    assert ex('{"other": 1}') is None
    assert ex('{"answer": ') is None
    assert ex("{" * 5000) is None
    assert get_extractor("json_field", field="result.value")('{"result": {"value": "x"}}') == "x"
    with pytest.raises(ConfigError):
        get_extractor("json_field", field="")


def _user_upper(text: str) -> str | None:
    return text.strip().upper() or None


def _user_raises(text: str) -> str | None:
    raise RuntimeError("boom")


def test_callable_extractor():
    assert get_extractor("tests.test_extract:_user_upper")(" abc ") == "ABC"
    assert get_extractor("tests.test_extract:_user_raises")("x") is None  # failure -> no answer
    assert get_extractor("callable", path="tests.test_extract:_user_upper")("q") == "Q"
    with pytest.raises(ConfigError, match="no callable"):
        get_extractor("tests.test_extract:missing")
    with pytest.raises(ConfigError, match="cannot import"):
        get_extractor("no_such_module_xyz:f")


def test_unknown_extractor_and_bad_options():
    with pytest.raises(ConfigError, match="allowed: answer_is, boxed"):
        get_extractor("nope")
    with pytest.raises(ConfigError, match="bad options"):
        get_extractor("boxed", pattern="x")


EQUAL = [
    ("3", "3.0", False, True),
    ("1,000", "1000", False, True),
    ("0.5", "1/2", False, False),
    ("0.5", "1/2", True, True),
    ("\\frac{1}{2}", "0.5", True, True),
    ("x+1", "1+x", True, True),
    ("2", "3", True, False),
    (None, None, True, False),
    ("7", None, False, False),
    ("Paris", "paris", False, False),
]


@pytest.mark.parametrize("a,b,math,expected", EQUAL)
def test_answers_equal(a, b, math, expected):
    assert answers_equal(a, b, math=math) is expected


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_extractors_never_raise_on_unicode(text):
    for name in ("boxed", "answer_is", "last_number", "choice"):
        out = get_extractor(name)(text)
        assert out is None or (isinstance(out, str) and out)
    get_extractor("json_field", field="a")(text)
    normalize_answer(text)


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 50_000,
        "{" * 100_000,
        "1," * 200_000,
        "the answer is " * 20_000,
        "9" * 300_000,
        "(" * 200_000 + "A",
        "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000,
    ],
)
def test_adversarial_inputs_bounded_time(text):
    extractors = [get_extractor(n) for n in ("boxed", "answer_is", "last_number", "choice")]
    extractors.append(get_extractor("json_field", field="a"))
    start = time.perf_counter()
    for ex in extractors:
        out = ex(text)
        assert out is None or len(out) <= 512
    assert time.perf_counter() - start < 5.0
    assert len(text) > MAX_CHARS


def test_registry_names():
    assert set(EXTRACTORS) == {
        "boxed",
        "answer_is",
        "last_number",
        "choice",
        "regex",
        "json_field",
        "callable",
    }
