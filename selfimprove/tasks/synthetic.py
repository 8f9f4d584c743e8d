"""Bundled synthetic task families: seeded, contamination-free, with difficulty levels 1-3.

Every problem is generated from a seeded random stream and has a canonical key (its content
without surface wording); a hash of that key assigns it to exactly one split ("base", "train",
"eval"), so the splits are disjoint by construction. Each family states its answer format in the
prompt ("... End with 'The answer is X.'") unless built with ``instruction=False``, which is how
the embedded base model sees them: for a 2-layer model trained from scratch the instruction is
only a distractor (its literal "The answer is X." invites copying "X"; sorting is learnt in 500
steps without it and not at all in 500 with it). Each family ships a worked solution for the base
split only, which is what the embedded base model is pre-trained on, together with plausible slipped versions of it (a
carry dropped, two neighbours swapped) that a noisy pre-training corpus mixes in at a set rate.
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
    """One generated problem: canonical key, question text (without the answer-format instruction),
    gold answer and a worked solution.

    ``slips`` are worked solutions with one plausible mistake each (their final answers are wrong);
    a maker derives them from the problem alone, without drawing from the random stream, so the
    problems a seed gives do not depend on them.
    """

    key: str
    question: str
    answer: str
    solution: str
    slips: tuple[str, ...] = ()


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
    # Whether prompts end with the answer-format instruction (real models need it; the embedded
    # base model is trained without it).
    instruction: bool = True

    def _text(self, p: Problem) -> str:
        return f"{p.question} {INSTRUCTION}" if self.instruction else p.question

    def _problems(
        self, split: str, n: int, seed: int, level: int, allow_fewer: bool = False
    ) -> list[Problem]:
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
        attempts = misses = 0
        while len(out) < n:
            attempts += 1
            if allow_fewer and misses > 20000:  # the split's problems are (nearly) all found
                break
            if attempts > 200 * n + 1000:
                raise InputError(
                    f"task {self.name}: cannot make {n} distinct {split!r} problems at level {level} "
                    f"(only {len(out)} found); ask for fewer"
                )
            p = self.maker(rng, level)
            if p.key in seen or split_of(f"{self.name}|{level}|{p.key}") != split:
                misses += 1
                continue
            misses = 0
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
                    "prompt": [{"role": "user", "content": self._text(p)}],
                    "meta": {"task": self.name, "level": level, "split": split},
                }
            )
            gold[pid] = p.answer
        return prompts, gold

    def make_demonstrations(
        self, n: int, seed: int = 0, level: int | None = None, slip_rate: float = 0.0
    ) -> list[dict[str, Any]]:
        """Worked examples ``{"prompt", "completion"}`` for supervised pre-training (base split only).

        Only the base split has worked solutions: the label-free "train" split and the "eval" split
        can never feed supervised data this way. With ``slip_rate`` > 0 that share of the rows
        (drawn from a stream of its own, so the problems are the same for every rate) shows one of
        the problem's slipped solutions instead, like a corpus written by careless people: a model
        trained on it samples a wrong answer about that often, while its most likely answer stays
        the right one. When the base split of a level holds fewer than ``n`` problems, all of them
        are returned (fewer rows, never repeats).
        """
        level = 1 if level is None else level
        if not 0.0 <= slip_rate < 1.0:
            raise InputError(f"task {self.name}: slip_rate must be in [0, 1), got {slip_rate!r}")
        slip_rng = random.Random(f"{self.name}|slips|{level}|{seed}")
        rows = []
        for p in self._problems("base", n, seed, level, allow_fewer=True):
            completion = p.solution
            if slip_rate and slip_rng.random() < slip_rate and p.slips:
                completion = slip_rng.choice(p.slips)
            rows.append({"prompt": [{"role": "user", "content": self._text(p)}], "completion": completion})
        return rows

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
_ADD = ["gets {v} more", "buys {v} more", "finds {v} more"]
_SUB = ["gives away {v}", "loses {v}", "sells {v}", "uses {v}"]
_MUL = ["ends up with {v} times as many"]

# level -> (number of steps, max start value, max operand, allow multiplication)
_ARITH_LEVELS = {1: (1, 99, 99, False), 2: (2, 99, 50, False), 3: (3, 500, 300, True)}
# The slips of a multiplication step: its result off by one or by ten.
_MUL_SLIPS = (-10, -1, 1, 10)


def column_work(a: int, op: str, b: int, slip: tuple[int, int] | None = None) -> tuple[str, int]:
    """Column addition / subtraction of ``a op b`` (``a >= b`` for "-"), units first:
    ``("7+4=11, 6+1+1=8", 81)`` for 67+14 and ``("12-7=5, 4-1=3", 35)`` for 52-17 (a borrow shows
    as the top digit plus ten, the next top digit one less).

    ``slip`` = (column, error) adds ``error`` to that column's written result, and the carry and
    the final value follow from what is written, like a person's slip.
    """
    da = [int(c) for c in str(a)][::-1]
    db = [int(c) for c in str(b)][::-1]
    width = max(len(da), len(db))
    da += [0] * (width - len(da))
    db += [0] * (width - len(db))
    parts: list[str] = []
    digits: list[int] = []
    carry = 0
    for i in range(width):
        err = slip[1] if slip is not None and slip[0] == i else 0
        if op == "+":
            total = max(0, da[i] + db[i] + carry + err)
            parts.append(f"{da[i]}+{db[i]}" + ("+1" if carry else "") + f"={total}")
            digits.append(total % 10)
            carry = total // 10
        else:
            top = da[i] - carry
            carry = 1 if top < db[i] else 0
            top += 10 * carry
            digit = min(9, max(0, top - db[i] + err))
            parts.append(f"{top}-{db[i]}={digit}")
            digits.append(digit)
    if op == "+" and carry:
        digits.append(carry)
    return ", ".join(parts), int("".join(map(str, reversed(digits))))


def _arith_work(
    start: int, ops: list[tuple[str, int]], slip: tuple[int, int, int] | None = None
) -> tuple[str, int] | None:
    """The worked solution and its final value, or None when a slip would make a count negative.

    Additions and subtractions are worked in columns, units first, then the step's equation
    (``67+14: 7+4=11, 6+1+1=8. 67+14=81.``): a 4-layer model from scratch learns one digit at a
    time in hundreds of steps where it did not learn whole two-digit sums in thousands
    (benchmarks/results/base_model_search.md, 2026-12-03). Multiplications are one equation. ``slip``
    = (step, column, error): that step's column result is off by ``error`` (a multiplication's
    result itself), and the later steps carry on from the wrong value.
    """
    value, work = start, []
    for i, (op, v) in enumerate(ops):
        step_slip = slip[1:] if slip is not None and slip[0] == i else None
        if op == "*":
            new = value * v + (step_slip[1] if step_slip else 0)
            work.append(f"{value}*{v}={new}.")
        else:
            if op == "-" and v > value:  # only after a slip: a count never goes negative
                return None
            columns, new = column_work(value, op, v, step_slip)
            work.append(f"{value}{op}{v}: {columns}. {value}{op}{v}={new}.")
        if new < 0:
            return None
        value = new
    return " ".join(work) + " " + format_answer(str(value)), value


def make_arithmetic(rng: random.Random, level: int) -> Problem:
    """A word problem: a start amount then 1-3 add/subtract/multiply steps; worked solution by steps.

    Level 1 is one step ("Jon has 18 coins and loses 4. How many coins now?"), levels 2 and 3
    chain two and three. The solution works each addition and subtraction in columns (see
    ``_arith_work``); the slips get one column (or a multiplication) wrong and carry on.
    """
    steps, max_start, max_operand, allow_mul = _ARITH_LEVELS[level]
    value = rng.randint(10, max_start)
    start = value
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    ops: list[tuple[str, int]] = []
    befores: list[int] = []  # the value each step starts from
    phrases: list[str] = []
    for _ in range(steps):
        befores.append(value)
        choices = ["+", "-"] + (["*"] if allow_mul and value <= 200 else [])
        op = rng.choice(choices)
        if op == "-" and value < 2:
            op = "+"
        if op == "+":
            v = rng.randint(2, max_operand)
            phrases.append(rng.choice(_ADD).format(v=v))
            value += v
        elif op == "-":
            v = rng.randint(1, min(value - 1, max_operand))
            phrases.append(rng.choice(_SUB).format(v=v))
            value -= v
        else:
            v = rng.randint(2, 5)
            phrases.append(rng.choice(_MUL).format(v=v))
            value *= v
        ops.append((op, v))
    if len(phrases) == 1:
        story = f"and {phrases[0]}"
    else:
        story = ", ".join(phrases[:-1]) + f", then {phrases[-1]}"
    question = f"{name} has {start} {item} {story}. How many {item} now?"
    if len(phrases) > 1:
        question = question.replace(f"{item} {phrases[0]}", f"{item}, {phrases[0]}", 1)
    key = f"{start}|" + "|".join(f"{op}{v}" for op, v in ops)
    worked = _arith_work(start, ops)
    assert worked is not None  # without a slip every value is a real count
    solution = worked[0]
    slips: dict[str, None] = {}  # ordered and without repeats
    for i, (op, v) in enumerate(ops):
        if op == "*":
            errors = [(0, e) for e in _MUL_SLIPS]
        else:
            errors = [(col, e) for col in range(len(str(max(befores[i], v)))) for e in (-1, 1)]
        for col, err in errors:
            worked = _arith_work(start, ops, (i, col, err))
            if worked is not None and worked[1] != value:
                slips[worked[0]] = None
    return Problem(key, question, str(value), solution, tuple(slips))


# --- counting: occurrences of a letter -------------------------------------------------------------

# level -> (alphabet size, min length, max length)
_COUNT_LEVELS = {1: (4, 6, 9), 2: (5, 10, 14), 3: (6, 15, 20)}


def make_counting(rng: random.Random, level: int) -> Problem:
    """How often a letter occurs in a random string; the worked solution lists the matches.

    The slips miss a match or see one too many.
    """
    size, lo, hi = _COUNT_LEVELS[level]
    alphabet = rng.sample(string.ascii_lowercase, size)
    word = "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))
    letter = rng.choice(alphabet)
    count = word.count(letter)

    def solution(k: int) -> str:
        matches = ", ".join([letter] * k) if k else "none"
        return f"Matches: {matches}. {format_answer(str(k))}"

    question = f"How many times does the letter '{letter}' appear in '{word}'?"
    slips = tuple(solution(k) for k in (count - 1, count + 1) if k >= 0)
    return Problem(f"{word}|{letter}", question, str(count), solution(count), slips)


# --- sorting: a list of numbers ascending ----------------------------------------------------------

# level -> (min items, max items, smallest value, largest value)
_SORT_LEVELS = {1: (3, 4, 10, 59), 2: (5, 6, 10, 99), 3: (7, 9, 0, 999)}


def make_sorting(rng: random.Random, level: int) -> Problem:
    """Sort a list of distinct numbers ascending; the answer is the comma-separated list.

    The slips swap two neighbours of the sorted list.
    """
    lo, hi, low, top = _SORT_LEVELS[level]
    values = rng.sample(range(low, top + 1), rng.randint(lo, hi))
    shown = ", ".join(map(str, values))
    ordered = sorted(values)
    answer = ", ".join(map(str, ordered))
    question = f"Sort ascending: {shown}."
    slips = []
    for i in range(len(ordered) - 1):
        swapped = [*ordered[:i], ordered[i + 1], ordered[i], *ordered[i + 2 :]]
        slips.append(format_answer(", ".join(map(str, swapped))))
    return Problem(shown, question, answer, format_answer(answer), tuple(slips))


# --- string_ops: reverse / uppercase / drop vowels -------------------------------------------------

# level -> (min length, max length, operations)
_STRING_LEVELS = {
    1: (3, 5, ("upper",)),
    2: (4, 6, ("no_vowels", "upper")),
    3: (6, 9, ("no_vowels", "reverse", "upper")),
}
_STRING_OPS = {
    "reverse": ("Reverse '{s}'.", lambda s: s[::-1]),
    "upper": ("Write '{s}' in capitals.", str.upper),
    "no_vowels": ("Remove the vowels from '{s}'.", lambda s: "".join(c for c in s if c not in "aeiou")),
}


def _string_slips(answer: str) -> tuple[str, ...]:
    """Typos of a string answer: two neighbours swapped, or (for capitals) one letter left small."""
    out = {answer[:i] + answer[i + 1] + answer[i] + answer[i + 2 :] for i in range(len(answer) - 1)}
    out |= {answer[:i] + c.lower() + answer[i + 1 :] for i, c in enumerate(answer) if c.isupper()}
    out.discard(answer)
    return tuple(format_answer(x) for x in sorted(out))


def make_string_ops(rng: random.Random, level: int) -> Problem:
    """A string transformation of a random lowercase string: level 1 writes it in capitals,
    level 2 also drops vowels, level 3 also reverses. Slips are typos of the answer."""
    lo, hi, ops = _STRING_LEVELS[level]
    op = rng.choice(ops)
    template, fn = _STRING_OPS[op]
    s = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))
    answer = fn(s)
    if not answer:  # an all-vowel string has an empty answer; the answer format cannot show it
        s += "x"
        answer = fn(s)
    question = template.format(s=s)
    return Problem(f"{op}|{s}", question, answer, format_answer(answer), _string_slips(answer))


ARITHMETIC = SyntheticTask(
    "arithmetic",
    "multi-step word problems with multi-digit numbers (add, subtract, multiply)",
    make_arithmetic,
)
COUNTING = SyntheticTask("counting", "count how often a letter occurs in a random string", make_counting)
SORTING = SyntheticTask("sorting", "sort a list of distinct numbers ascending", make_sorting)
STRING_OPS = SyntheticTask(
    "string_ops", "transform a random string: capitals, drop vowels, reverse", make_string_ops
)
