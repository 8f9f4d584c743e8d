"""User tasks from a JSONL file: one JSON object per line, gold split off at load time.

Each line needs a prompt (``prompt_field``: a string or a list of chat messages) and may carry a
gold answer (``gold_field``). Gold is removed from the record as it is read and kept in a separate
mapping, so prompts handed to the loop never contain it. Every other field goes to ``meta``,
except gold-named fields, which are refused (they would be a label leak). Rows are assigned to
"train" or "eval" by a hash of the prompt (only rows with gold can be "eval"), unless a ``split``
field names the split.

Rows with ``split: base`` are pre-training material for ``selfimprove build-base --task FILE``:
their gold answer (and an optional worked solution in a ``completion`` field, kept apart like
gold) become the demonstrations a small base model is trained on. A ``completion`` on a train or
eval row is refused: it would carry the answer into the label-free path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfimprove.errors import InputError
from selfimprove.gold import GOLD_FIELDS, find_gold_keys
from selfimprove.tasks.base import SPLITS, answers_equal, extract
from selfimprove.textio import read_utf8


@dataclass
class JsonlTask:
    """A user task loaded from a JSONL file (see the module docstring for the format)."""

    name: str
    path: Path
    records: list[dict[str, Any]]
    gold: dict[str, str]
    splits: dict[str, str]
    extractor: str = "answer_is"
    extractor_options: dict[str, Any] = field(default_factory=dict)
    case_sensitive: bool = True
    # prompt id -> its line in the file (for error messages that name file:line)
    lines: dict[str, int] = field(default_factory=dict)
    # Worked solutions of base rows (prompt_id -> text), kept apart from the records like gold.
    completions: dict[str, str] = field(default_factory=dict)

    def make_split(
        self, split: str, n: int | None = None, seed: int = 0, level: int | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The file's rows of ``split`` (the first ``n`` after a seeded shuffle if ``n`` is given)."""
        import random

        if split not in SPLITS:
            raise InputError(f"task {self.name}: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        rows = [r for r in self.records if self.splits[r["prompt_id"]] == split]
        if n is not None:
            if n < 1:
                raise InputError(f"task {self.name}: n must be >= 1, got {n}")
            rows = list(rows)
            random.Random(f"{self.name}|{split}|{seed}").shuffle(rows)
            rows = rows[:n]
        prompts = [json.loads(json.dumps(r)) for r in rows]  # deep copies: callers may mutate them
        gold = {r["prompt_id"]: self.gold[r["prompt_id"]] for r in rows if r["prompt_id"] in self.gold}
        return prompts, gold

    def make_demonstrations(
        self, n: int, seed: int = 0, level: int | None = None, slip_rate: float = 0.0
    ) -> list[dict[str, Any]]:
        """Worked examples ``{"prompt", "completion"}`` from the file's base rows (for ``build-base``).

        The completion is the row's ``completion`` field, else "The answer is <gold>.". With
        ``slip_rate`` > 0 that share of the rows (its own seeded stream) shows another base row's
        answer instead of its own (a plausible slip: a real answer of the task, the wrong one).
        At most ``n`` rows, never repeats; ``level`` is ignored (a file has one level).
        """
        import random

        from selfimprove.tasks.base import ANSWER_PREFIX

        if not 0.0 <= slip_rate < 1.0:
            raise InputError(f"task {self.name}: slip_rate must be in [0, 1), got {slip_rate!r}")
        base = [
            r for r in self.records if self.splits[r["prompt_id"]] == "base" and r["prompt_id"] in self.gold
        ]
        if not base:
            raise InputError(
                f"{self.path}: no 'base' rows with a gold answer; a base model is trained on rows "
                'with "split": "base" and an answer (optionally a worked solution in "completion")'
            )
        rows = list(base)
        random.Random(f"{self.name}|demos|{seed}").shuffle(rows)
        answers = sorted({self.gold[r["prompt_id"]] for r in base})
        slip_rng = random.Random(f"{self.name}|slips|{seed}")
        out = []
        for r in rows[:n]:
            pid, gold = r["prompt_id"], self.gold[r["prompt_id"]]
            completion = self.completions.get(pid) or f"{ANSWER_PREFIX} {gold}."
            others = [a for a in answers if a != gold]
            if slip_rate and others and slip_rng.random() < slip_rate:
                wrong = slip_rng.choice(others)
                head, sep, tail = completion.rpartition(gold)
                completion = f"{head}{wrong}{tail}" if sep else f"{ANSWER_PREFIX} {wrong}."
            prompt = r["prompt"]
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            out.append({"prompt": messages, "completion": completion})
        return out

    def extract(self, text: str) -> str | None:
        """The normalised final answer in a completion (None when there is none)."""
        return extract(text, self.extractor, self.extractor_options)

    def check(self, pred: str | None, gold: str) -> bool:
        """Whether an extracted answer equals the gold answer (numbers by value)."""
        return answers_equal(pred, gold, case_sensitive=self.case_sensitive)


def _check_prompt(prompt: Any, where: str) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError(f"{where}: the prompt is empty")
        return
    if not isinstance(prompt, list) or not prompt:
        raise InputError(f"{where}: the prompt must be a string or a non-empty list of chat messages")
    for i, m in enumerate(prompt):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise InputError(
                f"{where}: prompt message {i} must be {{'role': str, 'content': str}}, got {m!r}"
            )


def jsonl_task(
    path: str | Path,
    *,
    extractor: str = "answer_is",
    extractor_options: dict[str, Any] | None = None,
    gold_field: str = "answer",
    prompt_field: str = "prompt",
    id_field: str = "id",
    eval_fraction: float = 0.2,
    name: str | None = None,
    case_sensitive: bool = True,
) -> JsonlTask:
    """Load a user task from JSONL; errors name the file and line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"task file not found: {p}")
    if not 0 <= eval_fraction <= 1:
        raise InputError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    # Validate the extractor name now, not after an hour of generation.
    extract("", extractor, extractor_options)
    records: list[dict[str, Any]] = []
    gold: dict[str, str] = {}
    splits: dict[str, str] = {}
    lines: dict[str, int] = {}
    completions: dict[str, str] = {}
    content = read_utf8(p, "task file")
    # split("\n") as reading the file line by line does (splitlines() would also cut at U+2028).
    for lineno, line in enumerate(content.split("\n"), 1):
        where = f"{p}:{lineno}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
        if prompt_field not in row:
            raise InputError(f"{where}: missing the prompt field {prompt_field!r} (keys: {sorted(row)})")
        prompt = row.pop(prompt_field)
        _check_prompt(prompt, where)
        answer = row.pop(gold_field, None)
        pid = row.pop(id_field, None)
        split = row.pop("split", None)
        completion = row.pop("completion", None)
        leaks = find_gold_keys(row) + [f"{prompt_field}{k}" for k in find_gold_keys(prompt)]
        if leaks:
            raise InputError(
                f"{where}: field(s) {', '.join(leaks)} look like gold labels but are not the gold "
                f"field {gold_field!r}; rename them or pass gold_field= (gold-named fields: "
                f"{', '.join(sorted(GOLD_FIELDS))}, or any name starting with 'gold')"
            )
        text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        pid = str(pid) if pid is not None else f"{p.stem}-{digest[:12]}"
        if pid in splits:
            raise InputError(f"{where}: duplicate prompt id {pid!r}")
        if split is None:
            bucket = int(digest[:12], 16) / float(16**12)
            split = "eval" if answer is not None and bucket < eval_fraction else "train"
        elif split not in SPLITS:
            raise InputError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        if split == "eval" and answer is None:
            raise InputError(f"{where}: an 'eval' row needs a gold answer in {gold_field!r}")
        if completion is not None:
            if split != "base":
                raise InputError(
                    f"{where}: a 'completion' (worked solution) is only allowed on 'base' rows "
                    f"(pre-training material); on a {split!r} row it would carry the answer"
                )
            if not isinstance(completion, str) or not completion.strip():
                raise InputError(f"{where}: 'completion' must be a non-empty string")
            completions[pid] = completion
        if answer is not None:
            if isinstance(answer, (dict, list)):
                raise InputError(f"{where}: the gold field {gold_field!r} must be a string or number")
            gold[pid] = str(answer)
        splits[pid] = split
        lines[pid] = lineno
        records.append({"prompt_id": pid, "prompt": prompt, "meta": row})
    if not records:
        raise InputError(f"{p}: the task file has no rows")
    return JsonlTask(
        name=name or p.stem,
        path=p,
        records=records,
        gold=gold,
        splits=splits,
        extractor=extractor,
        extractor_options=dict(extractor_options or {}),
        case_sensitive=case_sensitive,
        lines=lines,
        completions=completions,
    )
