"""Degraded responses for SPO (Self-supervised Preference Optimization), as its paper builds them.

The paper (Li et al., "Self-supervised Preference Optimization: Enhance Your Language Model with
Preference Degree Awareness", EMNLP 2024 Findings, arXiv 2409.17791) extracts the key content of
a response with a keyword extractor (RAKE), removes more or less of it, and trains a classifier
on the model's representation to tell how much was removed: the self-supervised preference degree.
These pure functions build the variants; the loss is ``losses.spo_degree_paper_loss`` and the
trainer is ``train_dpo(..., degree_paper_weight=...)``.

Choices where the paper gives no detail we could use (documented in docs/training.md):

- **Key content** is ranked with RAKE (Rose et al. 2010) written out here, not a dependency:
  candidate phrases are the runs of words between stopwords and punctuation; a word scores
  degree / frequency over the candidates; a phrase scores the sum of its words; ties keep text
  order. Numbers count as words (in arithmetic answers they are the key content).
- **Intensity levels**: level ``l`` of ``levels`` removes ``round(l / (levels - 1) * m)`` of the
  ``m`` key phrases, best-ranked first; level 0 is the response itself, the last level removes
  every key phrase. A level that gives the same text as a lower one is left out (a short
  response has fewer distinct degradations than levels), so no two variants of a response share
  a text under different labels.
"""

from __future__ import annotations

import re
from collections import Counter

# A short English stopword list (RAKE's own idea: stopwords and punctuation split phrases).
STOPWORDS = frozenset(
    """a an and are as at be by for from has have in is it its of on or so than that the then
    there these this to was were will with which who what when where how we you your our i he she
    they them his her their not no yes do does did can could should would may might must
    """.split()
)
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[.'][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


def rake_key_phrases(text: str) -> list[tuple[str, float, list[tuple[int, int]]]]:
    """Key phrases of ``text`` ranked by RAKE score, best first: ``(phrase, score, spans)``.

    ``spans`` are the character offsets ``(start, end)`` of every occurrence of the phrase
    (compared case-insensitively).
    """
    candidates: list[list[tuple[int, int, str]]] = []
    current: list[tuple[int, int, str]] = []
    for m in _TOKEN.finditer(text):
        word = m.group(0)
        if not word[0].isalnum() or word.lower() in STOPWORDS:
            if current:
                candidates.append(current)
            current = []
            continue
        current.append((m.start(), m.end(), word.lower()))
    if current:
        candidates.append(current)
    freq: Counter = Counter()
    degree: Counter = Counter()
    for words in candidates:
        for _s, _e, w in words:
            freq[w] += 1
            degree[w] += len(words)
    by_phrase: dict[str, tuple[str, float, list[tuple[int, int]]]] = {}
    for words in candidates:
        start, end = words[0][0], words[-1][1]
        key = text[start:end].lower()
        if key not in by_phrase:
            score = sum(degree[w] / freq[w] for _s, _e, w in words)
            by_phrase[key] = (text[start:end], score, [])
        by_phrase[key][2].append((start, end))
    # Best score first; equal scores keep their order in the text (sorted is stable).
    return sorted(by_phrase.values(), key=lambda p: -p[1])


def remove_key_content(text: str, n: int) -> str:
    """``text`` without every occurrence of its ``n`` best-ranked key phrases, spaces tidied."""
    spans = sorted(span for _p, _sc, spans in rake_key_phrases(text)[: max(n, 0)] for span in spans)
    out, pos = [], 0
    for s, e in spans:
        out.append(text[pos:s])
        pos = e
    out.append(text[pos:])
    joined = "".join(out)
    # Removing a phrase leaves doubled or dangling spaces: collapse runs, keep line breaks.
    joined = re.sub(r"[ \t]{2,}", " ", joined)
    joined = re.sub(r"[ \t]+([.,;:!?])", r"\1", joined)
    return joined.strip()


def degraded_variants(text: str, levels: int) -> list[tuple[int, str]]:
    """``(level, text)`` for levels 0..levels-1 of key-content removal; level 0 is ``text`` itself.

    Levels whose text equals a lower level's are left out (see the module docstring).
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2 (level 0 and at least one degradation), got {levels}")
    m = len(rake_key_phrases(text))
    out: list[tuple[int, str]] = []
    seen: set[str] = set()
    for level in range(levels):
        n = round(level / (levels - 1) * m)
        variant = text if level == 0 else remove_key_content(text, n)
        if variant in seen:
            continue
        seen.add(variant)
        out.append((level, variant))
    return out
