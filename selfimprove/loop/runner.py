"""The self-training loop: rounds of generate -> score -> build -> train -> evaluate, resumable.

``run(config, run_dir)`` is the Python API behind ``selfimprove run``. Each round:

1. **generate**: ``generation.n`` samples per prompt of the label-free train split with the current
   adapter (the base model in round 1), appended to ``round_XX/rollouts.jsonl`` in whole prompt
   groups (the rollout store), so a kill loses at most the batch in flight.
2. **score**: extract answers, vote (pseudo-label, vote share, majority ratio), compute the
   configured reward terms (TRL call shape) -> ``scores.jsonl``. No gold is loaded in this stage.
3. **build**: SFT rows / DPO pairs / GRPO prompts -> ``train_data.jsonl`` (+ ``build_stats.json``).
   A round without data says why, skips training (the adapter stays) and goes on or stops.
4. **train**: a LoRA adapter into ``adapter.tmp/``, renamed to ``adapter/`` when complete.
5. **evaluate**: samples on the eval split (``eval/rollouts.jsonl``); gold answers are read here
   and only here for pass@1, maj@k and pass@k; label-free diagnostics beside them.
6. **metrics**: ``metrics.json`` per round, ``metrics.jsonl`` for the run, TensorBoard events,
   the collapse guard, and the round table on the terminal.

Every finished stage is recorded in ``state.json`` (written atomically), so ``resume=True`` picks
up after a crash or ``kill -9`` at any point without redoing finished stages. One generator engine
is built per process, lazily (a resumed run whose generation is done never starts one), and
adapters are passed to it by path (hot-swapped).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

from selfimprove.errors import ConfigError, InputError
from selfimprove.eval.evaluate import group_by_prompt
from selfimprove.gold import check_no_gold, check_record_no_gold, reads_gold
from selfimprove.loop.config import RunConfig, dump_config
from selfimprove.loop.guard import best_round, check_collapse, guard_settings
from selfimprove.models.loading import resolve_model
from selfimprove.runs.folder import LOCK_FILE, HeldLock, busy_error, folder_lock, lock_holder, write_manifest
from selfimprove.runs.folder import RunState as FolderState
from selfimprove.runs.io import (
    read_json,
    read_jsonl,
    write_bytes_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from selfimprove.tasks.base import SystemPromptTask

STAGES = ("generate", "score", "build", "train", "evaluate", "metrics")
STATE_FILE = "state.json"
# vLLM accepts these LoRA ranks as max_lora_rank.
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256)


def round_dir(run_dir: Path, r: int) -> Path:
    """The folder of round ``r`` (round 0 is the base model's evaluation)."""
    return run_dir / f"round_{r:02d}"


# ---------------------------------------------------------------------------------------------
# Run-folder state
# ---------------------------------------------------------------------------------------------


class RunState(FolderState):
    """``state.json`` of a self-training run: finished stages per round, the current adapter, guard events."""

    @classmethod
    def new(cls, path: Path, fingerprint: str) -> RunState:  # type: ignore[override]
        """A fresh state for a new run."""
        return super().new(path, fingerprint, STAGES, adapter=None, stopped=None, guard=[], rollbacks=0)

    @classmethod
    def load(cls, path: Path) -> RunState:  # type: ignore[override]
        """Read an existing state.json."""
        return super().load(path, STAGES)


# ---------------------------------------------------------------------------------------------
# Setup: run folder, manifest, model, task
# ---------------------------------------------------------------------------------------------


def resolve_run_dir(config: RunConfig, run_dir: str | Path | None) -> Path:
    """``run_dir`` if given, else ``output.run_dir``, else ``runs/<name>``."""
    if run_dir is not None:
        return Path(run_dir)
    if config.output.run_dir:
        return Path(config.output.run_dir)
    return Path("runs") / config.name


def _write_manifest(run_dir: Path, config: RunConfig, command: Sequence[str] | None, resumed: bool) -> None:
    fields = {
        "name": config.name,
        "config_hash": config.fingerprint(),
        "supervised": config.supervised,
        "seeds": {"loop": config.loop.seed, "task": config.task.seed},
    }
    write_manifest(run_dir, fields, command=command, resumed=resumed)


_run_dir_lock = folder_lock


# Files every start writes (the record of the start, not results).
_START_FILES = ("config.yaml", "manifest.json", "state.json", LOCK_FILE)


class _StartRecord:
    """A run folder as it was before a start wrote to it, to undo a start that computed nothing.

    Every check that can be made before writing is made before writing; this covers what can only
    fail later (an engine that does not start, a server that refuses the first request). When no
    result file appeared or changed, the folder gets back exactly what it held: a new folder is
    removed (so the corrected rerun is not refused), an existing one keeps its previous config,
    manifest, state and lock file byte for byte.
    """

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.existed = run_dir.is_dir()
        self.saved = {
            name: (run_dir / name).read_bytes() for name in _START_FILES if (run_dir / name).is_file()
        }
        self.results, self.folders = self._listing()

    def _listing(self) -> tuple[dict[str, tuple[int, int]], set[str]]:
        files: dict[str, tuple[int, int]] = {}
        folders: set[str] = set()
        if not self.dir.is_dir():
            return files, folders
        for path in self.dir.rglob("*"):
            rel = path.relative_to(self.dir).as_posix()
            if path.is_dir():
                folders.add(rel)
            elif rel not in _START_FILES and not (path.name.startswith(".") and path.name.endswith(".tmp")):
                st = path.stat()
                files[rel] = (st.st_size, st.st_mtime_ns)
        return files, folders

    def computed_nothing(self) -> bool:
        """Whether no result file appeared or changed since the record was taken."""
        return self._listing()[0] == self.results

    def undo(self, lock: HeldLock | None) -> None:
        """Put the folder back as it was (call only when :meth:`computed_nothing`)."""
        if not self.existed:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for name in _START_FILES:
            path = self.dir / name
            if name == LOCK_FILE and name in self.saved:
                if lock is not None:
                    lock.restore = True  # written back through the held descriptor
            elif name in self.saved:
                write_bytes_atomic(path, self.saved[name])
            else:
                path.unlink(missing_ok=True)
        _, folders = self._listing()
        for rel in sorted(folders - self.folders, key=len, reverse=True):
            with contextlib.suppress(OSError):
                (self.dir / rel).rmdir()  # only new, empty folders (a stage's output folder)


def _check_run_dir(config: RunConfig, run_dir: Path, resume: bool, force: bool) -> RunState | None:
    """Whether this start may use ``run_dir`` (the existing run's state, or None for a new run).

    Reads only: a refused start leaves the folder as it was.
    """
    holder = lock_holder(run_dir)
    if holder is not None:
        raise busy_error(run_dir, holder)
    return _check_run_dir_contents(config, run_dir, resume, force)


def _check_run_dir_contents(config: RunConfig, run_dir: Path, resume: bool, force: bool) -> RunState | None:
    # Not lock_holder here: called under our own lock, whose file must not be opened and closed
    # again (closing any descriptor of a file drops the process's POSIX locks on it).
    state_path = run_dir / STATE_FILE
    if state_path.exists():
        if not resume:
            raise ConfigError(
                f"run folder {run_dir} already holds a run; pass --resume to continue it, "
                "or choose another --run-dir"
            )
        state = RunState.load(state_path)
        fingerprint = config.fingerprint()
        if state.data.get("fingerprint") != fingerprint and not force:
            raise ConfigError(
                f"the config differs from the one {run_dir} was started with "
                f"(hash {fingerprint} vs {state.data.get('fingerprint')}); compare with "
                f"{run_dir / 'config.yaml'}; pass --force to resume with the new config anyway"
            )
        return state
    if resume and run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise ConfigError(f"cannot resume {run_dir}: it has no {STATE_FILE} (not a run folder?)")
    return None


def _prepare_run_dir(
    config: RunConfig, run_dir: Path, resume: bool, force: bool, command: Sequence[str] | None
) -> RunState:
    """Check the folder again (now under its lock), then record this start: config, manifest, state."""
    state_path = run_dir / STATE_FILE
    fingerprint = config.fingerprint()
    state = _check_run_dir_contents(config, run_dir, resume, force)
    if state is not None:
        if state.data.get("fingerprint") != fingerprint:  # --force: recorded only now, as the run starts
            state.data.setdefault("forced", []).append(
                {"from": state.data.get("fingerprint"), "to": fingerprint}
            )
            state.data["fingerprint"] = fingerprint
            state.data["finished"] = False
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = RunState.new(state_path, fingerprint)
    write_text_atomic(run_dir / "config.yaml", dump_config(config))
    _write_manifest(run_dir, config, command, resumed=resume and state_path.exists())
    state.save()
    return state


def _load_task(config: RunConfig):
    from selfimprove.tasks import get_task

    t = config.task
    if t.file is not None:
        options: dict[str, Any] = {
            "gold_field": t.gold_field,
            "prompt_field": t.prompt_field,
            "id_field": t.id_field,
            "eval_fraction": t.eval_fraction,
        }
        if t.extractor is not None:
            options["extractor"] = t.extractor
        if t.extractor_options:
            options["extractor_options"] = dict(t.extractor_options)
        task = get_task(t.file, **options)
    else:
        instruction = (
            t.instruction if t.instruction is not None else not config.model.path.startswith("builtin:")
        )
        task = get_task(t.name, instruction=instruction)
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
    return SystemPromptTask(task, system_prompt) if system_prompt else task


def _train_seed(config: RunConfig, r: int) -> int:
    """Seed of round ``r``'s train prompts: fixed, or new prompts every round (``task.resample_each_round``)."""
    return config.task.seed + (r if config.task.resample_each_round else 0)


def _rendered(config: RunConfig, prompts: list[dict[str, Any]], skip: Set[str]) -> list[dict[str, Any]]:
    """Prompt records as the run sends them: ``task.chat_template`` applied, skipped prompts left out."""
    from selfimprove.generate.inputs import as_chat

    out = [p for p in prompts if str(p["prompt_id"]) not in skip]
    if config.task.chat_template:
        out = [{**p, "prompt": as_chat(p["prompt"])} for p in out]
    return out


def _train_prompts(config: RunConfig, task, r: int, skip: Set[str] = frozenset()) -> list[dict[str, Any]]:
    """The label-free split of round ``r``: prompt records only; the gold mapping is discarded right here.

    ``skip``: prompt ids left out (too long for the model's context, ``task.long_prompts: skip``).
    """
    t = config.task
    prompts, _gold_unused = task.make_split(
        "train", n=t.train_size, seed=_train_seed(config, r), level=t.level
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


def _eval_split(
    config: RunConfig, task, skip: Set[str] = frozenset()
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The evaluation split (prompts, gold), with ``task.chat_template`` applied and ``skip`` left out."""
    t = config.task
    prompts, gold = task.make_split("eval", n=t.eval_size, seed=t.seed, level=t.level)
    prompts = _rendered(config, prompts, skip)
    return prompts, {pid: g for pid, g in gold.items() if pid not in skip}


def _prompt_origin(task, split: str, rec: Mapping[str, Any]) -> str:
    """Where a prompt comes from, for error messages: ``file:line`` of a user task, else its id."""
    line = (getattr(task, "lines", None) or {}).get(rec["prompt_id"])
    if line is not None:
        return f"{task.path}:{line}"
    return f"task {getattr(task, 'name', '?')}, {split} prompt {rec['prompt_id']!r}"


def _check_inputs(config: RunConfig, task, model_path: str) -> tuple[set[str], list[str]]:
    """Every prompt the run will send, checked with the model's tokenizer before anything is written.

    Returns the ids of prompts left out as too long (``task.long_prompts: skip``) and warnings for
    the user: plain text sent to a model with a chat template, an empty eval split, skipped prompts.
    Raises InputError on an empty prompt, a too-long one (unless skipped) or an empty train split.
    """
    from selfimprove.generate.inputs import check_prompts, context_length, has_chat_template, load_tokenizer

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
        for rec in _train_prompts(config, task, r):
            records.setdefault(str(rec["prompt_id"]), ("train", rec))
    eval_prompts, _gold = _eval_split(config, task)
    for rec in eval_prompts:
        records.setdefault(str(rec["prompt_id"]), ("eval", rec))
    ids = list(records)
    check = check_prompts(
        tokenizer,
        [records[pid][1]["prompt"] for pid in ids],
        [_prompt_origin(task, split, rec) for split, rec in records.values()],
        context=context,
        skip_long=config.task.long_prompts == "skip",
        skip_hint="task.long_prompts=skip",
    )
    skipped = {ids[i] for i in check.too_long}
    warnings: list[str] = []
    if skipped:
        warnings.append(f"{check.summary()} (task.long_prompts: skip)")
        for r in rounds:
            _train_prompts(config, task, r, skipped)  # raises if a round has no prompt left
    plain = any(isinstance(rec["prompt"], str) for _split, rec in records.values())
    if plain and config.task.chat_template is None and has_chat_template(tokenizer):
        warnings.append(
            f"the prompts of task {getattr(task, 'name', '?')} are plain text, but the model has a chat "
            "template: they are sent as raw text, which an instruct model may answer poorly; set "
            "task.chat_template: true to render them with the template (false silences this warning)"
        )
    if not _eval_split(config, task, skipped)[0]:
        warnings.append(f"{_empty_eval_reason(config, task)}: {EMPTY_EVAL_WARNING}")
    return skipped, warnings


EMPTY_EVAL_WARNING = (
    "no accuracy can be measured (every eval metric stays '-') and the collapse guard has no "
    "evaluation metrics to judge"
)


def _empty_eval_reason(config: RunConfig, task) -> str:
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


# ---------------------------------------------------------------------------------------------
# Stage helpers
# ---------------------------------------------------------------------------------------------


def _extractor(config: RunConfig, task) -> Callable[[str], str | None]:
    if config.scoring.extractor is not None:
        from selfimprove.score.extract import get_extractor

        return get_extractor(config.scoring.extractor, **config.scoring.extractor_options)
    return task.extract


def _build_rewards(config: RunConfig, task) -> list[tuple[str, Callable[..., list], float, bool]]:
    """(name, reward function, weight, reads_gold) for every configured reward term."""
    import inspect

    from selfimprove.score.rewards import REWARDS, get_reward

    ex_name, ex_options = _extractor_spec(config, task)
    terms = []
    for i, term in enumerate(config.scoring.rewards):
        options = dict(term.options)
        factory = REWARDS.get(term.name)
        if factory is not None:
            params = inspect.signature(factory).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            # Rewards read answers the way the task does unless the config says otherwise.
            if "extractor" not in options and ("extractor" in params or takes_any):
                options["extractor"] = ex_name
                if ex_options:
                    options.setdefault("extractor_options", dict(ex_options))
        supervised = reads_gold(REWARDS.get(term.name))
        if supervised and "math" not in options:
            # The supervised baseline rewards exactly what evaluation counts as correct (the
            # task's checker), not math-verify's looser equality (it reads "23, 10, 45" as the
            # set {10, 23, 45} and "ACB" as the product A*B*C, so it rewarded unsorted lists).
            options["check"] = task.check
        label = _reward_label(config, i)
        try:
            fn = get_reward(term.name, **options)
        except ConfigError as exc:
            raise ConfigError(f"scoring.rewards[{i}]: {exc}") from None
        terms.append((label, fn, term.weight, supervised or reads_gold(fn)))
    return terms


def _reward_label(config: RunConfig, i: int) -> str:
    """The key of reward term ``i`` in a scored record's ``rewards`` (its name; ``name_i`` when repeated)."""
    name = config.scoring.rewards[i].name
    return name if all(t.name != name for t in config.scoring.rewards[:i]) else f"{name}_{i}"


def _gold_reward_labels(config: RunConfig) -> list[str]:
    """The ``rewards`` keys of the terms that read gold (registered as supervised, or a marked user reward)."""
    from selfimprove.score.extract import load_callable
    from selfimprove.score.rewards import is_supervised_reward

    out = []
    for i, term in enumerate(config.scoring.rewards):
        if is_supervised_reward(term.name) or (":" in term.name and reads_gold(load_callable(term.name))):
            if not config.supervised:
                # A user's reward ("module:function") marked with selfimprove.gold.supervised_reward.
                raise ConfigError(
                    f"scoring.rewards[{i}].name: {term.name!r} reads gold labels; a run that uses it must "
                    "say `supervised: true` (it is a supervised baseline, not label-free)"
                )
            out.append(_reward_label(config, i))
    return out


def _extractor_spec(config: RunConfig, task) -> tuple[str, dict[str, Any]]:
    """(extractor name, options): ``scoring.extractor`` if set, else the task's own."""
    if config.scoring.extractor is not None:
        return config.scoring.extractor, dict(config.scoring.extractor_options)
    return task.extractor, dict(getattr(task, "extractor_options", None) or {})


def _mark_train_subset(scored: list[dict[str, Any]], n_train: int | None, seed: int) -> None:
    """Mark a seeded ``n_train`` subset of each prompt's samples ``in_train`` (vote on all, train on a few)."""
    import random

    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in scored:
        groups.setdefault(str(rec["prompt_id"]), []).append(rec)
    for pid, recs in groups.items():
        keep = set(range(len(recs)))
        if n_train is not None and n_train < len(recs):
            keep = set(random.Random(f"{seed}|{pid}").sample(range(len(recs)), n_train))
        for j, rec in enumerate(sorted(recs, key=lambda x: x.get("sample_index", 0))):
            rec["in_train"] = j in keep


def _sampling(config: RunConfig, *, n: int, temperature: float, max_tokens: int, seed: int):
    from selfimprove.generate.base import Sampling

    g = config.generation
    return Sampling(
        n=n, temperature=temperature, top_p=g.top_p, max_tokens=max_tokens, stop=tuple(g.stop), seed=seed
    )


def _generator_options(config: RunConfig) -> dict[str, Any]:
    options = config.generation.backend_options()
    if config.generation.backend == "vllm":
        need = config.training.lora.rank
        options.setdefault("enable_lora", True)
        options.setdefault("max_lora_rank", next((r for r in _VLLM_LORA_RANKS if r >= need), need))
        options.setdefault("seed", config.loop.seed)
    if config.model.trust_remote_code and config.generation.backend in ("vllm", "hf"):
        options.setdefault("trust_remote_code", True)
    return options


def _train_args(config: RunConfig) -> dict[str, Any]:
    tr = config.training
    args: dict[str, Any] = {
        "num_train_epochs": tr.epochs,
        "per_device_train_batch_size": tr.batch_size,
        "gradient_accumulation_steps": tr.gradient_accumulation_steps,
    }
    if tr.learning_rate is not None:
        args["learning_rate"] = tr.learning_rate
    if tr.max_steps is not None:
        args["max_steps"] = tr.max_steps
    if tr.max_length is not None:
        args["max_length"] = tr.max_length
    if tr.method == "grpo":
        args["num_generations"] = config.generation.n_train or config.generation.n
        args["max_completion_length"] = config.generation.max_tokens
        args["temperature"] = config.generation.temperature
        args.pop("max_length", None)
    args.update(tr.trl)
    return args


def _split_trainer_options(trainer: Callable[..., Any], options: Mapping[str, Any]) -> tuple[dict, dict]:
    """Options the trainer function takes as keywords (e.g. DPO ``beta``) vs. TRL config fields."""
    import inspect

    params = inspect.signature(trainer).parameters
    reserved = {
        "model",
        "rows",
        "pairs",
        "prompts",
        "out_dir",
        "adapter_init",
        "lora",
        "args",
        "seed",
        "reward_funcs",
        "allow_gold_columns",
    }
    kwargs = {k: v for k, v in options.items() if k in params and k not in reserved}
    args = {k: v for k, v in options.items() if k not in kwargs}
    return kwargs, args


def _lora(config: RunConfig):
    from selfimprove.train.common import LoraSettings

    lo = config.training.lora
    targets = lo.target_modules if isinstance(lo.target_modules, str) else tuple(lo.target_modules)
    alpha = int(lo.alpha) if float(lo.alpha).is_integer() else lo.alpha
    return LoraSettings(r=lo.rank, alpha=alpha, dropout=lo.dropout, target_modules=targets)


def _fmt(v: Any, width: int = 7) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        return f"{v:.3f}".rjust(width)
    return str(v).rjust(width)


def round_table(history: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> str:
    """The per-round table printed to the terminal (and put in the report)."""
    kmax = max(ks)
    cols = [
        ("round", "round"),
        ("pass@1", "eval/pass@1"),
        (f"maj@{kmax}", f"eval/maj@{kmax}"),
        (f"pass@{kmax}", f"eval/pass@{kmax}"),
        ("maj.ratio", "eval/majority_ratio"),
        ("entropy", "eval/answer_entropy"),
        ("length", "eval/mean_length"),
        ("lbl.acc", "train/label_accuracy"),
        ("rows", "data/rows"),
        ("loss", "train/loss"),
        ("note", "note"),
    ]
    widths = [max(7, len(c[0])) for c in cols]
    lines = ["  ".join(c[0].rjust(w) for c, w in zip(cols, widths, strict=True))]
    for m in history:
        cells = []
        for (_title, key), w in zip(cols, widths, strict=True):
            v = m.get(key)
            if key == "note":
                cells.append(str(v or ""))
            elif key == "eval/mean_length" and isinstance(v, float):
                cells.append(f"{v:.1f}".rjust(w))
            else:
                cells.append(_fmt(v, w))
        lines.append("  ".join(cells).rstrip())
    base = next((m.get("eval/constant_baseline") for m in history if "eval/constant_baseline" in m), None)
    if isinstance(base, float):
        lines.append(
            f"(always giving the eval split's most common answer scores {_fmt(base, 0).strip()}: "
            "pass@1 near it means the model ignores the question)"
        )
    if history:
        lines += [f"(warning: {w})" for w in round_warnings(history[-1])]
    return "\n".join(lines)


# A round warns when at least this share of its eval samples (or of its votes) hit max_tokens.
TRUNCATION_WARN_SHARE = 0.2


def round_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """What a user must know about one round's numbers (printed under the round table, in the report)."""
    r = metrics.get("round")
    out = []
    if metrics.get("eval/prompts") == 0:
        out.append(f"the eval split is empty: {EMPTY_EVAL_WARNING}")
    cut = metrics.get("eval/truncated_no_answer_rate")
    if isinstance(cut, float) and cut >= TRUNCATION_WARN_SHARE:
        out.append(
            f"{cut:.0%} of round {r}'s eval samples stopped at the token limit before giving an answer: "
            "raise generation.max_tokens / evaluation.max_tokens"
        )
    votes = metrics.get("train/truncated_vote_share")
    if isinstance(votes, float) and votes >= TRUNCATION_WARN_SHARE:
        out.append(
            f"{votes:.0%} of round {r}'s votes came from samples cut at the token limit (their answers "
            "were read from unfinished completions): raise generation.max_tokens, or set "
            "scoring.vote_truncated: false to leave them out of the vote"
        )
    return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class _Run:
    """One run in one process: the config, the run folder, the lazily built generator."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        progress: bool,
        log: Callable[[str], None],
        generator: Any = None,
    ):
        """Resolve the model, load the task and check every prompt; nothing is written yet."""
        self.cfg = config
        self.dir = run_dir
        self.state: RunState = None  # type: ignore[assignment]  # set once the run folder is prepared
        self.progress = progress
        self.log = log
        self.model_path = resolve_model(config.model.path, progress=progress)
        self.task = _load_task(config)
        self.gold_rewards = _gold_reward_labels(config)
        self.skip, self.warnings = _check_inputs(config, self.task, self.model_path)
        self._generator = generator
        # A generator handed in by the caller is the caller's to close.
        self._owns_generator = generator is None
        self._judge_generator = None
        self._tb = None

    # -- shared resources -------------------------------------------------------------------
    @property
    def generator(self):
        """The engine, built on first use (start-up is slow; a resumed run may not need it)."""
        if self._generator is None:
            from selfimprove.generate import build_generator

            self.log(f"starting the {self.cfg.generation.backend} generator on {self.model_path}")
            self._generator = build_generator(
                self.cfg.generation.backend, self.model_path, **_generator_options(self.cfg)
            )
        return self._generator

    def close(self) -> None:
        """Shut the engine down and flush TensorBoard."""
        for name in ("_generator", "_judge_generator"):
            gen = getattr(self, name)
            if gen is not None and (name != "_generator" or self._owns_generator):
                gen.close()
            setattr(self, name, None)
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _tensorboard(self):
        if not self.cfg.output.tensorboard:
            return None
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as exc:  # tensorboard missing: metrics still go to JSONL
                self.log(f"tensorboard disabled: {exc}")
                self.cfg.output.tensorboard = False
                return None
            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        return self._tb

    def _generate(self, out_dir: Path, prompts, sampling, adapter: str | None) -> list[dict[str, Any]]:
        from selfimprove.generate._common import adapter_fingerprint
        from selfimprove.generate.store import RolloutStore, generate_rollouts

        store = RolloutStore(out_dir)
        version = adapter_fingerprint(adapter) if adapter else None
        done = store.completed(sampling.n)
        if len(done) < len(prompts):
            gen = self.generator
        else:
            gen = None
        if gen is None:
            return store.records()
        return generate_rollouts(
            gen,
            prompts,
            sampling,
            store,
            adapter=adapter,
            adapter_version=version,
            batch_size=self.cfg.generation.batch_size,
            progress=self.progress,
        )

    def _abs(self, adapter: str | None) -> str | None:
        """An adapter path from state.json (relative to the run folder) as an absolute path."""
        if adapter is None:
            return None
        p = Path(adapter)
        return str(p if p.is_absolute() else (self.dir / p).resolve())

    def _train_gold(self, r: int) -> dict[str, str]:
        """Gold of round ``r``'s train split: only for evaluation diagnostics and SUPERVISED baselines."""
        t = self.cfg.task
        _prompts, gold = self.task.make_split(
            "train", n=t.train_size, seed=_train_seed(self.cfg, r), level=t.level
        )
        return gold

    # -- stages -----------------------------------------------------------------------------
    def stage_generate(self, r: int, rdir: Path, adapter: str | None) -> dict[str, Any]:
        g = self.cfg.generation
        prompts = _train_prompts(self.cfg, self.task, r, self.skip)
        sampling = _sampling(
            self.cfg,
            n=g.n,
            temperature=g.temperature,
            max_tokens=g.max_tokens,
            seed=self.cfg.loop.seed * 1000 + r,
        )
        recs = self._generate(rdir, prompts, sampling, self._abs(adapter))
        return {"tokens": sum(int(x.get("completion_tokens") or 0) for x in recs), "rollouts": len(recs)}

    def stage_score(self, r: int, rdir: Path, adapter: str | None) -> dict[str, Any]:
        from selfimprove.score.diagnostics import score_rollouts

        rollouts = read_jsonl(rdir / "rollouts.jsonl")
        terms = _build_rewards(self.cfg, self.task)
        label_free = {name: (fn, w) for name, fn, w, gold in terms if not gold}
        supervised = [(name, fn, w) for name, fn, w, gold in terms if gold]
        paraphrase_labels = (
            self._paraphrase_labels(r, rdir, adapter) if self.cfg.scoring.paraphrase.enabled else None
        )
        if paraphrase_labels is not None:
            # Per-prompt columns travel in ``meta``: score_rollouts hands meta fields to the rewards.
            rollouts = [
                {
                    **x,
                    "meta": {
                        **(x.get("meta") or {}),
                        "paraphrase_label": paraphrase_labels.get(str(x["prompt_id"])),
                    },
                }
                for x in rollouts
            ]
        judge_scores = None
        if self.cfg.scoring.judge is not None:
            judge_scores, judge_report = self._judge(rollouts, adapter, r)
            # Read back by compute_metrics (judge/failure_rate, judge/position_consistency, ...).
            write_json_atomic(rdir / "judge_report.json", judge_report)
        ex_name, ex_options = _extractor_spec(self.cfg, self.task)
        scored = score_rollouts(
            rollouts,
            ex_name,
            # The default (majority-vote agreement) only when no reward is configured at all: a
            # SUPERVISED run with only gold terms is rewarded by them alone, not vote + gold.
            label_free if terms else None,
            extractor_options=ex_options,
            min_share=self.cfg.scoring.min_majority_ratio,
            judge_scores=judge_scores,
            vote_truncated=self.cfg.scoring.vote_truncated,
        )
        if judge_scores is not None:
            w = self.cfg.scoring.judge.weight
            for rec in scored:
                js = rec.get("judge_score")
                rec["rewards"]["judge"] = js
                if js is not None:
                    rec["reward"] = (rec["reward"] or 0.0) + w * js
        if supervised:
            # SUPERVISED baseline only (`supervised: true` was required to get here): the gold
            # column reaches the verifier reward and nothing else.
            gold = self._train_gold(r)
            column = [gold.get(str(x["prompt_id"])) for x in scored]
            completions = [x["completion"] for x in scored]
            for name, fn, w in supervised:
                values = fn(completions, answer=column, prompt_id=[x["prompt_id"] for x in scored])
                for rec, v in zip(scored, values, strict=True):
                    rec["rewards"][name] = v
                    if v is not None:
                        rec["reward"] = (rec["reward"] or 0.0) + w * float(v)
        _mark_train_subset(scored, self.cfg.generation.n_train, seed=self.cfg.loop.seed + r)
        write_jsonl_atomic(rdir / "scores.jsonl", scored)
        return {"scored": len(scored)}

    def _judge(
        self, rollouts: Sequence[Mapping[str, Any]], adapter: str | None, r: int = 0
    ) -> tuple[list[float | None], dict[str, Any]]:
        """Self-rewarding: the judge (by default the policy with its current adapter) scores every rollout.

        ``pointwise``: a rubric score per rollout. ``pairwise``: per prompt, each rollout's mean
        soft win probability against the prompt's other rollouts (both orders judged, failures
        left out; None without a valid comparison). Returns the scores in rollout order and the
        judge's report (counts, failure rate, position consistency) with NaN as None.
        """
        from selfimprove.generate import build_generator
        from selfimprove.score.judging import build_rollout_judge, judge_rollouts

        jc = self.cfg.scoring.judge
        if jc.model == "policy":
            gen, judge_adapter = self.generator, self._abs(adapter)
        else:
            if self._judge_generator is None:
                self._judge_generator = build_generator(self.cfg.generation.backend, jc.model)
            gen, judge_adapter = self._judge_generator, None
        judge, opponents = build_rollout_judge(
            jc.kind,
            gen,
            jc.options,
            adapter=judge_adapter,
            seed=self.cfg.loop.seed * 1000 + r,
            progress=self.progress,
            where="scoring.judge.options",
        )
        return judge_rollouts(judge, rollouts, opponents=opponents, seed=f"{self.cfg.loop.seed}|{r}")

    def _paraphrase_labels(self, r: int, rdir: Path, adapter: str | None) -> dict[str, str | None]:
        """Co-Reward: the policy's voted answer on a paraphrase of each train question."""
        from selfimprove.score.paraphrase import paraphrased_prompts, voted_labels

        pc = self.cfg.scoring.paraphrase

        def writer():
            # Made once, by the base model (or paraphrase.model), and kept: every round votes on the same rewrites.
            if pc.model is None:
                return self.generator, lambda: None
            from selfimprove.generate import build_generator

            gen = build_generator(self.cfg.generation.backend, pc.model)
            return gen, gen.close

        prompts = _train_prompts(self.cfg, self.task, r, self.skip)
        para_prompts = paraphrased_prompts(
            prompts, self.dir / "paraphrases.jsonl", writer, template=pc.template, log=self.log
        )
        g = self.cfg.generation
        sampling = _sampling(
            self.cfg,
            n=pc.n or g.n,
            temperature=g.temperature,
            max_tokens=g.max_tokens,
            seed=self.cfg.loop.seed * 1000 + 250 + r,
        )
        if not para_prompts:
            return {}
        recs = self._generate(rdir / "paraphrase", para_prompts, sampling, self._abs(adapter))
        return voted_labels(recs, _extractor(self.cfg, self.task))

    def stage_build(self, r: int, rdir: Path) -> dict[str, Any]:
        from selfimprove.data import build

        scored = [s for s in read_jsonl(rdir / "scores.jsonl") if s.get("in_train", True)]
        method = self.cfg.training.method
        if method == "sft":
            options = dict(self.cfg.data.sft)
            if options.get("select") == "verifier" and "verifier_key" not in options and self.gold_rewards:
                # A supervised run's verifier is its gold reward: found under its own name.
                options["verifier_key"] = self.gold_rewards[0]
            rows, stats = build.build_sft_rows(scored, **options)
        elif method == "dpo":
            rows, stats = build.build_dpo_pairs(scored, **self.cfg.data.dpo)
        else:
            rows, stats = build.build_grpo_prompts(scored, **self.cfg.data.grpo)
        if not self.cfg.supervised:
            for i, row in enumerate(rows):
                check_no_gold(row.keys(), f"training row {i} of round {r}")
        write_jsonl_atomic(rdir / "train_data.jsonl", rows)
        write_json_atomic(rdir / "build_stats.json", stats.to_dict())
        info = {"rows": len(rows), "build": stats.summary()}
        if stats.empty:
            info["empty"] = stats.why_empty()
        return info

    def stage_train(self, r: int, rdir: Path, adapter: str | None) -> dict[str, Any]:
        rows = read_jsonl(rdir / "train_data.jsonl")
        tmp = rdir / "adapter.tmp"
        final = rdir / "adapter"
        if tmp.exists():
            shutil.rmtree(tmp)  # a half-trained adapter from a killed run: train again
        init = self._abs(adapter) if self.cfg.training.init == "continue" else None
        common = {"adapter_init": init, "lora": _lora(self.cfg), "seed": self.cfg.loop.seed + r}
        method = self.cfg.training.method
        if method == "sft":
            from selfimprove.train.sft import train_sft as trainer
        elif method == "dpo":
            from selfimprove.train.dpo import train_dpo as trainer
        else:
            from selfimprove.train.grpo import train_grpo as trainer
        kwargs, args = _split_trainer_options(trainer, _train_args(self.cfg))
        if not self.progress:
            args.setdefault("disable_tqdm", True)  # --no-progress also quiets TRL's bars
        if method == "grpo":
            terms = _build_rewards(self.cfg, self.task)
            uses_gold = any(gold for *_x, gold in terms)
            if uses_gold and not self.cfg.supervised:
                raise ConfigError("a gold-reading reward needs `supervised: true`")
            if uses_gold:
                # SUPERVISED baseline: the verifier reward reads the gold column during training.
                gold = self._train_gold(r)
                rows = [{**row, "answer": gold.get(str(row["prompt_id"]))} for row in rows]
                kwargs["allow_gold_columns"] = True
            kwargs["reward_funcs"] = [fn for _n, fn, _w, _g in terms]
            args.setdefault("reward_weights", [w for _n, _f, w, _g in terms])
        result = trainer(self.model_path, rows, out_dir=tmp, args=args, **common, **kwargs)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        from selfimprove.train.adapters import set_adapter_round

        set_adapter_round(final, r)
        losses = [x for x in result.loss_history if x is not None]
        return {
            # Relative to the run folder, so a moved or copied run folder still resumes.
            "adapter": final.relative_to(self.dir).as_posix(),
            "train_loss": losses[-1] if losses else None,
            "train_loss_first": losses[0] if losses else None,
            "train_steps": result.steps,
            "train_tokens": result.tokens,
        }

    def stage_evaluate(self, r: int, rdir: Path, adapter: str | None) -> dict[str, Any]:
        ev = self.cfg.evaluation
        prompts, gold = _eval_split(self.cfg, self.task, self.skip)
        sampling = _sampling(
            self.cfg,
            n=ev.n,
            temperature=ev.temperature,
            max_tokens=ev.max_tokens or self.cfg.generation.max_tokens,
            seed=self.cfg.loop.seed * 1000 + 500 + r,
        )
        recs = self._generate(rdir / "eval", [dict(p) for p in prompts], sampling, self._abs(adapter))
        return {
            "eval_rollouts": len(recs),
            "tokens_eval": sum(int(x.get("completion_tokens") or 0) for x in recs),
        }

    def compute_metrics(self, r: int, rdir: Path) -> dict[str, Any]:
        """Every metric of round ``r`` from the files of its folder (gold read here only)."""
        from selfimprove.eval import eval_metrics, label_accuracy, reward_accuracy
        from selfimprove.score.diagnostics import group_diagnostics, truncated_vote_share

        rs = self.state.round(r)
        m: dict[str, Any] = {"round": r}
        extract = _extractor(self.cfg, self.task)
        # The size of the eval split: 0 means every eval metric is missing (round_table warns).
        m["eval/prompts"] = len(_eval_split(self.cfg, self.task, self.skip)[0])
        ev_recs = read_jsonl(rdir / "eval" / "rollouts.jsonl")
        _prompts, gold = _eval_split(self.cfg, self.task, self.skip)
        acc = eval_metrics(ev_recs, gold, extract, self.task.check, ks=self.cfg.evaluation.k)
        m.update({f"eval/{k}": v for k, v in acc.items()})
        scores_path = rdir / "scores.jsonl"
        if scores_path.exists():
            scored = read_jsonl(scores_path)
            groups = group_by_prompt(scored)
            answers = {pid: [x.get("extracted") for x in recs] for pid, recs in groups.items()}
            m.update({f"train/{k}": v for k, v in group_diagnostics(groups, answers).items()})
            rewards = [x["reward"] for x in scored if x.get("reward") is not None]
            if rewards:
                mean = sum(rewards) / len(rewards)
                m["train/reward_mean"] = mean
                m["train/reward_std"] = math.sqrt(sum((x - mean) ** 2 for x in rewards) / len(rewards))
            m["train/abstain_rate"] = sum(
                recs[0].get("pseudo_label") is None for recs in groups.values()
            ) / max(1, len(groups))
            m["train/truncated_vote_share"] = truncated_vote_share(scored)
            # Diagnostics of the pseudo-labels against gold: evaluation only, computed after the
            # round's data was built and trained on, never fed back.
            train_gold = {pid: g for pid, g in self._train_gold(r).items() if g is not None}
            pseudo = {pid: recs[0].get("pseudo_label") for pid, recs in groups.items()}
            accuracy = {
                "train/label_accuracy": label_accuracy(pseudo, train_gold, self.task.check),
                "train/reward_accuracy": reward_accuracy(
                    ((str(x["prompt_id"]), x.get("reward"), x.get("extracted")) for x in scored),
                    train_gold,
                    self.task.check,
                ),
            }
            m.update({k: v for k, v in accuracy.items() if v is not None})
        judge_path = rdir / "judge_report.json"
        if judge_path.exists():
            # The judge's own counts: parse-failure rate, position consistency (pairwise), ...
            for key, value in read_json(judge_path).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    m[f"judge/{key}"] = value
        if "rows" in rs:
            m["data/rows"] = rs["rows"]
        for key, name in (
            ("train_loss", "train/loss"),
            ("train_steps", "train/steps"),
            ("train_tokens", "train/tokens"),
            ("tokens", "generate/tokens"),
            ("tokens_eval", "evaluate/tokens"),
        ):
            if rs.get(key) is not None:
                m[name] = rs[key]
        for stage, secs in rs.get("seconds", {}).items():
            m[f"time/{stage}"] = secs
        if rs.get("skipped_training"):
            m["note"] = "no data: training skipped"
        return m

    # -- loop -------------------------------------------------------------------------------
    def _stage(self, r: int, stage: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        if self.state.done(r, stage):
            return self.state.round(r)
        self.log(f"round {r}: {stage}")
        start = time.perf_counter()
        info = fn(*args) or {}
        self.state.mark(r, stage, time.perf_counter() - start, **info)
        return self.state.round(r)

    def _finish_round(self, r: int, rdir: Path) -> dict[str, Any]:
        def metrics() -> dict[str, Any]:
            m = self.compute_metrics(r, rdir)
            write_json_atomic(rdir / "metrics.json", m)
            return {}

        self._stage(r, "metrics", metrics)
        m = read_json(rdir / "metrics.json")
        self._write_history()
        return m

    def history(self) -> list[dict[str, Any]]:
        """Metrics of every finished round, in round order."""
        out = []
        for r in sorted(int(k) for k in self.state.data["rounds"]):
            p = round_dir(self.dir, r) / "metrics.json"
            if p.exists() and self.state.done(r, "metrics"):
                m = read_json(p)
                guard = next((g for g in self.state.data["guard"] if g["round"] == r), None)
                if guard and guard["collapsed"]:
                    m["note"] = (m.get("note", "") + " collapse").strip()
                out.append(m)
        return out

    def _write_history(self) -> None:
        hist = self.history()
        path = self.dir / "metrics.jsonl"
        if path.exists() and read_jsonl(path) == hist:
            # A resumed run passing a finished round: nothing new to record (a resume that
            # computes nothing leaves the folder as it was, and TensorBoard gets no duplicates).
            return
        write_jsonl_atomic(path, hist)
        tb = self._tensorboard()
        if tb is not None:
            last = hist[-1]
            for key, value in last.items():
                if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    tb.add_scalar(key, value, last["round"])
            tb.flush()

    def _guard(self, r: int, m: Mapping[str, Any]) -> str | None:
        """Apply the collapse guard to round ``r``; return "stop", "rollback" or None."""
        gcfg = self.cfg.loop.guard
        if not gcfg.enabled or r == 0:
            return None
        if any(g["round"] == r for g in self.state.data["guard"]):
            decision = next(g for g in self.state.data["guard"] if g["round"] == r)
        else:
            hist = self.history()
            ref = next((h for h in hist if h["round"] == 0), hist[0] if hist else None)
            if ref is None or ref["round"] == r:
                return None
            decision = check_collapse(ref, m, round=r, **guard_settings(gcfg)).to_dict()
            self.state.data["guard"].append(decision)
            self.state.save()
        if not decision["collapsed"]:
            return None
        self.log(f"round {r}: collapse guard: " + "; ".join(decision["reasons"]))
        if gcfg.action == "warn":
            return None
        if gcfg.action == "rollback" and self.state.data.get("rollbacks", 0) < gcfg.max_rollbacks:
            return "rollback"
        return "stop"

    def run_loop(self) -> dict[str, Any]:
        cfg = self.cfg
        ks = cfg.evaluation.k
        st = self.state
        if cfg.evaluation.base:
            rdir = round_dir(self.dir, 0)
            self._stage(0, "evaluate", self.stage_evaluate, 0, rdir, None)
            self._finish_round(0, rdir)
            self.log(round_table(self.history(), ks))
        for r in range(1, cfg.loop.rounds + 1):
            if st.data.get("stopped"):
                break
            rdir = round_dir(self.dir, r)
            rdir.mkdir(parents=True, exist_ok=True)
            rs = st.round(r)
            # The adapter this round starts from is fixed when the round starts (resume-safe).
            if "adapter_in" not in rs:
                rs["adapter_in"] = st.data.get("adapter")
                st.save()
            adapter_in = rs["adapter_in"]
            self._stage(r, "generate", self.stage_generate, r, rdir, adapter_in)
            self._stage(r, "score", self.stage_score, r, rdir, adapter_in)
            info = self._stage(r, "build", self.stage_build, r, rdir)
            if info.get("rows", 0) == 0:
                if not st.done(r, "train"):
                    self.log(
                        f"round {r}: no training data ({info.get('empty') or info.get('build')}); training skipped"
                    )
                    st.mark(r, "train", 0.0, skipped_training=True, adapter=adapter_in)
                if cfg.loop.on_empty_data == "stop":
                    self._stage(r, "evaluate", dict)
                    self._finish_round(r, rdir)
                    st.data["stopped"] = f"round {r} produced no training data (loop.on_empty_data: stop)"
                    st.save()
                    break
            else:
                self._stage(r, "train", self.stage_train, r, rdir, adapter_in)
            adapter_out = st.round(r).get("adapter")
            self._stage(r, "evaluate", self.stage_evaluate, r, rdir, adapter_out)
            m = self._finish_round(r, rdir)
            if st.data.get("adapter") != adapter_out and not st.round(r).get("rolled_back"):
                st.data["adapter"] = adapter_out
                st.save()
            self.log(round_table(self.history(), ks))
            action = self._guard(r, m)
            if action == "rollback" and not st.round(r).get("rolled_back"):
                healthy = self._last_healthy_adapter(r)
                st.data["rollbacks"] = st.data.get("rollbacks", 0) + 1
                st.data["adapter"] = healthy
                st.round(r)["rolled_back"] = True
                st.save()
                self.log(f"round {r}: rolled back to {healthy or 'the base model'}")
            elif action == "stop":
                st.data["stopped"] = f"collapse guard stopped the loop after round {r}"
                st.save()
                break
        return self.summarize()

    def _last_healthy_adapter(self, r: int) -> str | None:
        collapsed = {g["round"] for g in self.state.data["guard"] if g["collapsed"]}
        for prev in range(r - 1, 0, -1):
            if prev not in collapsed and self.state.done(prev, "metrics"):
                return self.state.round(prev).get("adapter")
        return None

    def summarize(self) -> dict[str, Any]:
        hist = self.history()
        collapsed = [g["round"] for g in self.state.data["guard"] if g["collapsed"]]
        best, score = best_round(hist, collapsed)
        best_adapter = None
        if best is not None and best > 0:
            best_adapter = self._abs(self.state.round(best).get("adapter"))
        self.state.data["finished"] = True
        self.state.save()
        summary = {
            "completed": True,  # written only when the loop has ended (all rounds, or stopped)
            "name": self.cfg.name,
            "supervised": self.cfg.supervised,
            "rounds_completed": max((h["round"] for h in hist), default=0),
            "stopped": self.state.data.get("stopped"),
            "best_round": best,
            "best_round_score": score,
            "best_round_rule": "highest mean majority ratio on eval prompts among rounds the guard did not flag (no gold)",
            "best_adapter": best_adapter,
            "final_adapter": self._abs(self.state.data.get("adapter")),
            "collapsed_rounds": collapsed,
            "guard": self.state.data["guard"],
            # What the start's checks found: warnings, and prompts left out as too long.
            "warnings": list(self.warnings),
            "skipped_prompts": sorted(self.skip),
            "history": hist,
        }
        write_json_atomic(self.dir / "summary.json", summary)
        return summary


def run(
    config: RunConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    command: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    generator: Any = None,
) -> dict[str, Any]:
    """Run (or resume) the rounds of ``config`` in ``run_dir``; return the run summary.

    ``generator``: an already running engine on the same base model (e.g. a ``VLLMGenerator`` with
    LoRA enabled) to use instead of building one; the caller keeps ownership and closes it.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(
            f"run() takes a RunConfig (see selfimprove.loop.config.load_config), got {type(config).__name__}"
        )
    out = resolve_run_dir(config, run_dir)
    logger = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    # Every check before the run folder is touched: the folder (reads only), the model, the task
    # and its data files, every prompt against the model's tokenizer (the config and its options
    # were checked when it loaded). A start refused here leaves the folder as it was, or absent.
    _check_run_dir(config, out, resume, force)
    runner = _Run(config, out, progress, logger, generator=generator)
    if generator is not None:
        given = Path(str(getattr(generator, "model_dir", getattr(generator, "model", "")))).resolve()
        if given != Path(runner.model_path).resolve():
            raise ConfigError(f"the generator serves {given}, but model.path resolves to {runner.model_path}")
    for warning in runner.warnings:
        logger(f"WARNING: {warning}")
    record = _StartRecord(out)
    with _run_dir_lock(out) as lock:
        runner.state = _prepare_run_dir(config, out, resume, force, command)
        try:
            try:
                return runner.run_loop()
            finally:
                runner.close()
        except Exception:
            if record.computed_nothing():
                record.undo(lock)
                logger(f"the start failed before computing anything: {out} is left as it was")
            raise


__all__ = [
    "STAGES",
    "RunState",
    "resolve_run_dir",
    "round_dir",
    "round_table",
    "round_warnings",
    "run",
]
