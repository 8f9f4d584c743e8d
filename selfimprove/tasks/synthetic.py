"""Bundled synthetic task families: seeded, contamination-free, with difficulty levels 1-3.

Every problem is generated from a seeded random stream and has a canonical key (its content
without surface wording); a hash of that key assigns it to exactly one split ("base", "train",
"eval"), so the splits are disjoint by construction. Each family states its answer format in the
prompt ("The answer is ...") and ships a worked solution for the base split only, which is what
the embedded base model is pre-trained on.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfimprove.errors import InputError
from selfimprove.tasks.base import (
    ANSWER_PREFIX,
    SPLITS,
    answers_equal,
    extract,
    problem_id,
    split_of,
)

LEVELS = (1, 2, 3)
INSTRUCTION = f"End with '{ANSWER_PREFIX} X.'"


@dataclass(frozen=True)
class Problem:
    """One generated problem: canonical key, question text, gold answer and a worked solution."""

    key: str
    question: str
    answer: str
    solution: str


ProblemMaker = Callable[[random.Random, int], Problem]


def format_answer(answer: str) -> str:
    """The answer sentence every bundled task asks for."""
    return f"{ANSWER_PREFIX} {answer}."


@dataclass(frozen=True)
class SyntheticTask:
    """A bundled task family: a seeded problem maker plus split, format and checking rules."""

    name: str
    description: str
    maker: ProblemMaker
    extractor: str = "answer_is"
    extractor_options: dict[str, Any] = field(default_factory=dict)
    case_sensitive: bool = True
    levels: tuple[int, ...] = LEVELS

    def _problems(self, split: str, n: int, seed: int, level: int) -> list[Problem]:
        if split not in SPLITS:
            raise InputError(f"task {self.name}: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if level not in self.levels:
            raise InputError(f"task {self.name}: unknown level {level!r}; choose one of {self.levels}")
        if not isinstance(n, int) or n < 1:
            raise InputError(f"task {self.name}: n must be an integer >= 1, got {n!r}")
        # A string seed is hashed deterministically by random.Random (unlike hash()).
        rng = random.Random(f"{self.name}|{split}|{level}|{seed}")
        seen: set[str] = set()
        out: list[Problem] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * n + 1000:
                raise InputError(
                    f"task {self.name}: cannot make {n} distinct {split!r} problems at level {level} "
                    f"(only {len(out)} found); ask for fewer"
                )
            p = self.maker(rng, level)
            if p.key in seen or split_of(f"{self.name}|{level}|{p.key}") != split:
                continue
            seen.add(p.key)
            out.append(p)
        return out

    def make_split(
        self, split: str, n: int | None = None, seed: int = 0, level: int | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """``n`` distinct problems of ``split`` at ``level`` (default 1): (prompts without gold, gold)."""
        if n is None:
            raise InputError(f"task {self.name}: synthetic tasks need n (how many prompts)")
        level = 1 if level is None else level
        prompts: list[dict[str, Any]] = []
        gold: dict[str, str] = {}
        for p in self._problems(split, n, seed, level):
            pid = problem_id(self.name, f"{level}|{p.key}")
            prompts.append(
                {
                    "prompt_id": pid,
                    "prompt": [{"role": "user", "content": p.question}],
                    "meta": {"task": self.name, "level": level, "split": split},
                }
            )
            gold[pid] = p.answer
        return prompts, gold

    def make_demonstrations(self, n: int, seed: int = 0, level: int | None = None) -> list[dict[str, Any]]:
        """Worked examples ``{"prompt", "completion"}`` for supervised pre-training (base split only).

        Only the base split has worked solutions: the label-free "train" split and the "eval" split
        can never feed supervised data this way.
        """
        level = 1 if level is None else level
        return [
            {"prompt": [{"role": "user", "content": p.question}], "completion": p.solution}
            for p in self._problems("base", n, seed, level)
        ]

    def extract(self, text: str) -> str | None:
        """The normalised final answer in a completion (None when there is none)."""
        return extract(text, self.extractor, self.extractor_options)

    def check(self, pred: str | None, gold: str) -> bool:
        """Whether an extracted answer equals the gold answer (numbers by value)."""
        return answers_equal(pred, gold, case_sensitive=self.case_sensitive)

    def format_answer(self, answer: str) -> str:
        """The gold answer written in the format the prompt asks for."""
        return format_answer(answer)


# --- arithmetic: multi-step word problems --------------------------------------------------------

_NAMES = ["Ann", "Bob", "Cara", "Dan", "Eve", "Finn", "Gia", "Hal", "Ivy", "Jon", "Kim", "Leo"]
_ITEMS = ["apples", "coins", "books", "shells", "cards", "stamps", "marbles", "pens"]
_ADD = ["gets {v} more", "buys {v} more", "finds {v} more", "is given {v} more"]
_SUB = ["gives away {v}", "loses {v}", "sells {v}", "uses {v}"]
_MUL = ["ends up with {v} times as many"]

# level -> (number of steps, max start value, max operand, allow multiplication)
_ARITH_LEVELS = {1: (2, 50, 50, False), 2: (2, 200, 99, True), 3: (3, 500, 300, True)}


def make_arithmetic(rng: random.Random, level: int) -> Problem:
    """A word problem: a start amount then 2-3 add/subtract/multiply steps; worked solution by steps."""
    steps, max_start, max_operand, allow_mul = _ARITH_LEVELS[level]
    value = rng.randint(10, max_start)
    start = value
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    ops: list[tuple[str, int]] = []
    phrases: list[str] = []
    work: list[str] = []
    for _ in range(steps):
        choices = ["+", "-"] + (["*"] if allow_mul and value <= 200 else [])
        op = rng.choice(choices)
        if op == "-" and value < 2:
            op = "+"
        if op == "+":
            v = rng.randint(2, max_operand)
            new = value + v
            phrases.append(rng.choice(_ADD).format(v=v))
        elif op == "-":
            v = rng.randint(1, min(value - 1, max_operand))
            new = value - v
            phrases.append(rng.choice(_SUB).format(v=v))
        else:
            v = rng.randint(2, 5)
            new = value * v
            phrases.append(rng.choice(_MUL).format(v=v))
        work.append(f"{value}{op}{v}={new}.")
        ops.append((op, v))
        value = new
    if len(phrases) == 2:
        story = f"{name} {phrases[0]}, then {phrases[1]}."
    else:
        story = f"{name} {', then '.join(phrases[:-1])}, and then {phrases[-1]}."
    question = f"{name} has {start} {item}. {story} How many {item} does {name} have now? {INSTRUCTION}"
    key = f"{start}|" + "|".join(f"{op}{v}" for op, v in ops)
    return Problem(key, question, str(value), " ".join(work) + " " + format_answer(str(value)))


# --- counting: occurrences of a letter -------------------------------------------------------------

# level -> (alphabet size, min length, max length)
_COUNT_LEVELS = {1: (4, 6, 9), 2: (5, 10, 14), 3: (6, 15, 20)}


def make_counting(rng: random.Random, level: int) -> Problem:
    """How often a letter occurs in a random string; the worked solution lists the matches."""
    size, lo, hi = _COUNT_LEVELS[level]
    alphabet = rng.sample(string.ascii_lowercase, size)
    word = "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))
    letter = rng.choice(alphabet)
    count = word.count(letter)
    matches = ", ".join([letter] * count) if count else "none"
    question = f"How many times does the letter '{letter}' appear in '{word}'? {INSTRUCTION}"
    solution = f"Matches: {matches}. {format_answer(str(count))}"
    return Problem(f"{word}|{letter}", question, str(count), solution)


# --- sorting: a list of numbers ascending ----------------------------------------------------------

# level -> (min items, max items, max value)
_SORT_LEVELS = {1: (3, 4, 50), 2: (5, 6, 99), 3: (7, 9, 999)}


def make_sorting(rng: random.Random, level: int) -> Problem:
    """Sort a list of distinct numbers ascending; the answer is the comma-separated list."""
    lo, hi, top = _SORT_LEVELS[level]
    values = rng.sample(range(top + 1), rng.randint(lo, hi))
    shown = ", ".join(map(str, values))
    answer = ", ".join(map(str, sorted(values)))
    question = f"Sort these numbers from smallest to largest: {shown}. {INSTRUCTION}"
    return Problem(shown, question, answer, format_answer(answer))


# --- string_ops: reverse / uppercase / drop vowels -------------------------------------------------

# level -> (min length, max length)
_STRING_LEVELS = {1: (3, 5), 2: (6, 8), 3: (9, 12)}
_STRING_OPS = {
    "reverse": ("Reverse the string '{s}'.", lambda s: s[::-1]),
    "upper": ("Write the string '{s}' in capital letters.", str.upper),
    "no_vowels": (
        "Remove every vowel from the string '{s}'.",
        lambda s: "".join(c for c in s if c not in "aeiou"),
    ),
}


def make_string_ops(rng: random.Random, level: int) -> Problem:
    """A string transformation (reverse, capitals, drop vowels) of a random lowercase string."""
    lo, hi = _STRING_LEVELS[level]
    op = rng.choice(sorted(_STRING_OPS))
    template, fn = _STRING_OPS[op]
    s = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))
    answer = fn(s)
    if not answer:  # an all-vowel string has an empty answer; the answer format cannot show it
        s += "x"
        answer = fn(s)
    question = f"{template.format(s=s)} {INSTRUCTION}"
    return Problem(f"{op}|{s}", question, answer, format_answer(answer))


ARITHMETIC = SyntheticTask(
    "arithmetic",
    "multi-step word problems with multi-digit numbers (add, subtract, multiply)",
    make_arithmetic,
)
COUNTING = SyntheticTask("counting", "count how often a letter occurs in a random string", make_counting)
SORTING = SyntheticTask("sorting", "sort a list of distinct numbers ascending", make_sorting)
STRING_OPS = SyntheticTask(
    "string_ops", "transform a random string: reverse, capitals, drop vowels", make_string_ops
)
