"""Key-content removal for SPO's paper-style degree term: tables of inputs and expected outputs."""

from __future__ import annotations

import pytest

from selfimprove.data.degrade import degraded_variants, rake_key_phrases, remove_key_content


@pytest.mark.parametrize(
    "text, expected",
    [
        # Stopwords and punctuation split candidates; a phrase scores the sum of degree / frequency.
        ("The answer is ILCH.", [("answer", 1.0), ("ILCH", 1.0)]),
        (
            "Deep learning models need large data sets and fast hardware.",
            [("Deep learning models need large data sets", 49.0), ("fast hardware", 4.0)],
        ),
        # A repeated phrase is one key phrase with every occurrence; numbers are words.
        ("7 + 7 = 14. The answer is 14.", [("7", 1.0), ("14", 1.0), ("answer", 1.0)]),
        ("", []),
        ("the of and", []),
    ],
)
def test_rake_key_phrases(text, expected):
    assert [(p, s) for p, s, _spans in rake_key_phrases(text)] == expected


def test_rake_spans_cover_every_occurrence():
    (phrase, _score, spans), *_ = [p for p in rake_key_phrases("14 is not 14") if p[0] == "14"]
    assert phrase == "14" and spans == [(0, 2), (10, 12)]


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("The answer is ILCH.", 0, "The answer is ILCH."),
        ("The answer is ILCH.", 1, "The is ILCH."),
        ("The answer is ILCH.", 2, "The is."),
        ("The answer is ILCH.", 9, "The is."),
        ("7 + 7 = 14. The answer is 14.", 2, "+ =. The answer is."),
    ],
)
def test_remove_key_content(text, n, expected):
    assert remove_key_content(text, n) == expected


@pytest.mark.parametrize(
    "text, levels, expected",
    [
        # Level l removes round(l / (levels - 1) * m) of the m key phrases.
        ("The answer is ILCH.", 3, [(0, "The answer is ILCH."), (1, "The is ILCH."), (2, "The is.")]),
        # Level 2 of 4 would remove round(4/3) = 1 phrase again: the duplicate text is left out.
        ("The answer is ILCH.", 4, [(0, "The answer is ILCH."), (1, "The is ILCH."), (3, "The is.")]),
        # Nothing to remove: only the response itself.
        ("the of", 3, [(0, "the of")]),
    ],
)
def test_degraded_variants(text, levels, expected):
    assert degraded_variants(text, levels) == expected


def test_degraded_variants_needs_two_levels():
    with pytest.raises(ValueError, match="levels must be >= 2"):
        degraded_variants("x", 1)
