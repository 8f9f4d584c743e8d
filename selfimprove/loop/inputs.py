"""What a self-training run reads: the task, its label-free train prompts and its eval split, checked up front.

Every prompt the run will send is checked with the model's tokenizer before anything is written
(``check_inputs``); the train prompts are handed out without gold (``train_prompts``).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

from selfimprove.errors import ConfigError, InputError
from selfimprove.gold import check_record_no_gold
from selfimprove.loop.config import RunConfig
from selfimprove.tasks.base import SystemPromptTask

# The tasks load_task built from a config's task section (by id, while a run holds them): the
# training processes of `training.accelerate_config` rebuild these, and no other task object.
_CONFIG_TASKS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def load_task(config: RunConfig):
    """The task of the config's ``task`` section (with its system prompt, if any)."""
    from selfimprove.tasks import task_from_section

    t = config.task
    task = task_from_section(t, default_instruction=not config.model.path.startswith("builtin:"))
    system_prompt = t.system_prompt
    if t.system_prompt_file is not None:
        try:
            system_prompt = Path(t.system_prompt_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"task.system_prompt_file: cannot read {t.system_prompt_file} ({exc})"
            ) from None
        if not system_prompt:
            raise ConfigError(f"task.system_prompt_file: {t.system_prompt_file} is empty")
    task = SystemPromptTask(task, system_prompt) if system_prompt else task
    try:
        _CONFIG_TASKS[id(task)] = task
    except TypeError:  # not weakly referenceable: check_launch_task then refuses nothing
        pass
    return task


def check_launch_task(config: RunConfig, task) -> None:
    """Refuse a task object given to run() when GRPO trains under ``training.accelerate_config``.

    The training processes rebuild the reward terms (the task's extractor) and, in a SUPERVISED
    run, the gold from the config's ``task`` section; another task object would silently differ.
    """
    tr = config.training
    if tr.accelerate_config is None or tr.method != "grpo" or _CONFIG_TASKS.get(id(task)) is task:
        return
    if not hasattr(type(task), "__weakref__"):
        return
    raise ConfigError(
        "run(task=...): GRPO under training.accelerate_config rebuilds the task from the config's task "
        "section in each training process, so a Task object given from Python cannot be used; describe it "
        "in the task section (e.g. task.file), or set training.accelerate_config: null"
    )


def train_seed(config: RunConfig, r: int) -> int:
    """Seed of round ``r``'s train prompts: fixed, or new prompts every round (``task.resample_each_round``)."""
    return config.task.seed + (r if config.task.resample_each_round else 0)


def _rendered(config: RunConfig, prompts: list[dict[str, Any]], skip: Set[str]) -> list[dict[str, Any]]:
    """Prompt records as the run sends them: ``task.chat_template`` applied, skipped prompts left out."""
    from selfimprove.generate.inputs import as_chat

    out = [p for p in prompts if str(p["prompt_id"]) not in skip]
    if config.task.chat_template:
        out = [{**p, "prompt": as_chat(p["prompt"])} for p in out]
    return out


def train_prompts(config: RunConfig, task, r: int, skip: Set[str] = frozenset()) -> list[dict[str, Any]]:
    """The label-free split of round ``r``: prompt records only; the gold mapping is discarded right here.

    ``skip``: prompt ids left out (too long for the model's context, ``task.long_prompts: skip``).
    """
    t = config.task
    prompts, _gold_unused = task.make_split(
        "train", n=t.train_size, seed=train_seed(config, r), level=t.level
    )
    del _gold_unused  # the label-free path never holds gold
    if not prompts:
        raise InputError(f"task {getattr(task, 'name', '?')}: the train split is empty")
    for rec in prompts:
        check_record_no_gold(rec, f"train prompt {rec.get('prompt_id')!r}")
    prompts = _rendered(config, prompts, skip)
    if not prompts:
        raise InputError(
            f"task {getattr(task, 'name', '?')}: every train prompt of round {r} is longer than the model's "
            "context (task.long_prompts: skip left none)"
        )
    return prompts


def eval_split(
    config: RunConfig, task, skip: Set[str] = frozenset()
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The evaluation split (prompts, gold), with ``task.chat_template`` applied and ``skip`` left out."""
    t = config.task
    prompts, gold = task.make_split("eval", n=t.eval_size, seed=t.seed, level=t.level)
    prompts = _rendered(config, prompts, skip)
    return prompts, {pid: g for pid, g in gold.items() if pid not in skip}


def prompt_origin(task, split: str, rec: Mapping[str, Any]) -> str:
    """Where a prompt comes from, for error messages: ``file:line`` of a user task, else its id."""
    line = (getattr(task, "lines", None) or {}).get(rec["prompt_id"])
    if line is not None:
        return f"{task.path}:{line}"
    return f"task {getattr(task, 'name', '?')}, {split} prompt {rec['prompt_id']!r}"


def check_inputs(config: RunConfig, task, model_path: str) -> tuple[set[str], list[str]]:
    """Every prompt the run will send, checked with the model's tokenizer before anything is written.

    Returns the ids of prompts left out as too long (``task.long_prompts: skip``) and warnings for
    the user: plain text sent to a model with a chat template, an empty eval split, skipped prompts.
    Raises InputError on an empty prompt, a too-long one (unless skipped) or an empty train split.
    """
    from selfimprove.generate.inputs import check_prompts, context_length, has_chat_template, load_tokenizer

    check_launch_task(config, task)
    tokenizer = load_tokenizer(model_path, trust_remote_code=config.model.trust_remote_code)
    if config.task.chat_template and not has_chat_template(tokenizer):
        raise ConfigError(
            f"task.chat_template: true, but the tokenizer of {model_path} has no chat template; "
            "set task.chat_template: false (or null) to send plain-text prompts as they are"
        )
    g = config.generation
    max_model_len = g.backend_options().get("max_model_len") if g.backend == "vllm" else None
    context = context_length(model_path, max_model_len)
    rounds = range(1, config.loop.rounds + 1) if config.task.resample_each_round else [1]
    records: dict[str, tuple[str, dict[str, Any]]] = {}
    for r in rounds:
        for rec in train_prompts(config, task, r):
            records.setdefault(str(rec["prompt_id"]), ("train", rec))
    eval_prompts, _gold = eval_split(config, task)
    for rec in eval_prompts:
        records.setdefault(str(rec["prompt_id"]), ("eval", rec))
    ids = list(records)
    check = check_prompts(
        tokenizer,
        [records[pid][1]["prompt"] for pid in ids],
        [prompt_origin(task, split, rec) for split, rec in records.values()],
        context=context,
        skip_long=config.task.long_prompts == "skip",
        skip_hint="task.long_prompts=skip",
    )
    skipped = {ids[i] for i in check.too_long}
    warnings: list[str] = []
    if skipped:
        warnings.append(f"{check.summary()} (task.long_prompts: skip)")
        for r in rounds:
            train_prompts(config, task, r, skipped)  # raises if a round has no prompt left
    plain = any(isinstance(rec["prompt"], str) for _split, rec in records.values())
    if plain and config.task.chat_template is None and has_chat_template(tokenizer):
        warnings.append(
            f"the prompts of task {getattr(task, 'name', '?')} are plain text, but the model has a chat "
            "template: they are sent as raw text, which an instruct model may answer poorly; set "
            "task.chat_template: true to render them with the template (false silences this warning)"
        )
    if not eval_split(config, task, skipped)[0]:
        warnings.append(f"{empty_eval_reason(config, task)}: {EMPTY_EVAL_WARNING}")
    return skipped, warnings


EMPTY_EVAL_WARNING = (
    "no accuracy can be measured (every eval metric stays '-') and the collapse guard has no "
    "evaluation metrics to judge"
)


def empty_eval_reason(config: RunConfig, task) -> str:
    """Why the eval split is empty, for the warning."""
    t = config.task
    if t.file is None:
        return "the eval split is empty"
    n_gold = len(getattr(task, "gold", {}) or {})
    if n_gold == 0:
        return f"the eval split is empty: no row of {t.file} has a gold answer in {t.gold_field!r}"
    return (
        f"the eval split is empty: {n_gold} row(s) of {t.file} have a gold answer but none went to the "
        f"eval split (task.eval_fraction {t.eval_fraction}, or their `split` fields)"
    )


def train_gold(config: RunConfig, task, r: int) -> dict[str, str]:
    """Gold of round ``r``'s train split: only for evaluation diagnostics and SUPERVISED baselines."""
    t = config.task
    _prompts, gold = task.make_split("train", n=t.train_size, seed=train_seed(config, r), level=t.level)
    return gold
