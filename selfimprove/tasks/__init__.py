"""Tasks: bundled synthetic families (arithmetic, counting, sorting, string_ops) and user JSONL tasks.

``get_task(name)`` returns a bundled task by name, or loads a user task when ``name`` is a path to
a ``.jsonl`` file (keyword options go to :func:`jsonl_task`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from selfimprove.errors import InputError
from selfimprove.gold import GOLD_FIELDS, find_gold_keys
from selfimprove.tasks.base import (
    SPLITS,
    Task,
    answers_equal,
    extract,
    normalize_answer,
    split_of,
)
from selfimprove.tasks.jsonl import JsonlTask, jsonl_task
from selfimprove.tasks.synthetic import ARITHMETIC, COUNTING, SORTING, STRING_OPS, SyntheticTask

TASKS: dict[str, SyntheticTask] = {t.name: t for t in (ARITHMETIC, COUNTING, SORTING, STRING_OPS)}


def get_task(name: str, **options: Any) -> Task:
    """A bundled task by name, or a user task from a ``.jsonl`` path (options go to ``jsonl_task``).

    A bundled task takes one option, ``instruction`` (default True): whether its prompts end with
    the answer-format instruction "End with 'The answer is X.'".
    """
    if name in TASKS:
        unknown = sorted(set(options) - {"instruction"})
        if unknown:
            raise InputError(
                f"task {name!r} is bundled and takes only the option 'instruction' (got {unknown})"
            )
        if "instruction" in options and not isinstance(options["instruction"], bool):
            raise InputError(
                f"task {name!r}: instruction must be true or false, got {options['instruction']!r}"
            )
        return dataclasses.replace(TASKS[name], **options) if options else TASKS[name]
    if name.endswith(".jsonl") or Path(name).expanduser().is_file():
        return jsonl_task(name, **options)
    raise InputError(
        f"unknown task {name!r}; bundled tasks: {', '.join(TASKS)}; or give a path to a .jsonl file"
    )


def task_from_section(section: Any, *, default_instruction: bool) -> Task:
    """The task a config's ``task`` section names: a user JSONL file (``file`` and its field
    options) or a bundled task (``name``; ``instruction`` falls back to ``default_instruction``)."""
    if section.file is not None:
        options: dict[str, Any] = {
            "gold_field": section.gold_field,
            "prompt_field": section.prompt_field,
            "id_field": section.id_field,
            "eval_fraction": section.eval_fraction,
        }
        if section.extractor is not None:
            options["extractor"] = section.extractor
        if section.extractor_options:
            options["extractor_options"] = dict(section.extractor_options)
        return get_task(section.file, **options)
    instruction = section.instruction if section.instruction is not None else default_instruction
    return get_task(section.name, instruction=instruction)


__all__ = [
    "GOLD_FIELDS",
    "SPLITS",
    "TASKS",
    "JsonlTask",
    "SyntheticTask",
    "Task",
    "answers_equal",
    "extract",
    "find_gold_keys",
    "get_task",
    "task_from_section",
    "jsonl_task",
    "normalize_answer",
    "split_of",
]
