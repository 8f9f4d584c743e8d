"""``distill``: label unlabeled inputs with a teacher, select, LoRA-train a student, evaluate.

Stages, each recorded in ``state.json`` of the run folder (round 0: shared; round i >= 1: the
i-th selection variant, one per strategy and size)::

    label         teacher: k samples per input -> label (vote), vote share, label probability
    eval_teacher  teacher on the held-out split (gold used here)
    need          student: teacher-forced loss and entropy on each training text
    eval_student  student before training on the held-out split
    select        per variant: the chosen inputs and their weights
    train         per variant: LoRA SFT of the student on the chosen inputs
    evaluate      per variant: the trained student on the held-out split

A stage is skipped on ``--resume`` when it finished with the same settings; when the settings it
depends on changed (e.g. ``selection.*``) it is redone with everything after it, and the teacher's
samples are kept. Gold answers reach evaluation and the report only: the unlabeled inputs are
taken from the task's train split with the gold mapping dropped on the spot.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from selfimprove.distill.config import (
    DistillConfig,
    config_from_dict,
    dump_config,
    load_config,
    teacher_is_builtin,
)
from selfimprove.errors import InputError
from selfimprove.generate.pool import EnginePool
from selfimprove.runs import (
    folder_lock,
    open_state,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
    write_manifest,
)
from selfimprove.runs.io import write_text_atomic

STAGES = ("label", "eval_teacher", "need", "eval_student", "select", "train", "evaluate")
VARIANT_STAGES = ("select", "train", "evaluate")
UNTIL = ("label", "need", "select")
LABELS_FILE = "labels.jsonl"
NEED_FILE = "need.jsonl"
RESULTS_FILE = "results.json"


@dataclass
class DistillResult:
    """What a run produced: its folder and the summary written to ``results.json``."""

    run_dir: Path
    summary: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Task and inputs
# ---------------------------------------------------------------------------------------------


def load_task(cfg: DistillConfig) -> Any:
    """The task of the config (bundled, or a user JSONL file)."""
    from selfimprove.tasks import task_from_section

    t = cfg.task
    try:
        return task_from_section(t, default_instruction=not teacher_is_builtin(cfg))
    except InputError as exc:
        key = "task.file" if t.file is not None else "task.name"
        raise InputError(f"{key}: {exc}") from None


def unlabeled_inputs(cfg: DistillConfig, task: Any) -> list[dict[str, Any]]:
    """The task's train split as prompt records; its gold mapping is dropped right here."""
    from selfimprove.gold import check_record_no_gold

    t = cfg.task
    prompts, _gold_unused = task.make_split("train", n=t.unlabeled_size, seed=t.seed, level=t.level)
    del _gold_unused  # the labelling path never holds gold
    for rec in prompts:
        check_record_no_gold(rec, f"input {rec.get('prompt_id')!r}")
    if not prompts:
        raise InputError(
            f"task {getattr(task, 'name', '?')}: the train split (the unlabeled inputs) is empty"
        )
    return [
        {"prompt_id": str(p["prompt_id"]), "prompt": p["prompt"], "meta": p.get("meta", {})} for p in prompts
    ]


def eval_split(cfg: DistillConfig, task: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The held-out split (prompts, gold): for evaluation only."""
    t = cfg.task
    return task.make_split("eval", n=t.eval_size, seed=t.seed, level=t.level)


def label_text(task: Any, label: str) -> str:
    """The label written in the task's answer format ("The answer is X.")."""
    from selfimprove.tasks.base import ANSWER_PREFIX

    fmt = getattr(task, "format_answer", None)
    return fmt(label) if callable(fmt) else f"{ANSWER_PREFIX} {label}."


def training_text(row: Mapping[str, Any], target: str, task: Any) -> str:
    """What the student learns to write for a labelled input (``training.target``; for
    ``rationale``, the label task's text: see :func:`training_pairs`)."""
    return row["completion"] if target == "completion" else label_text(task, row["teacher_label"])


def rationale_text(row: Mapping[str, Any]) -> str:
    """The teacher's worked solution without its answer sentence ('' when the sample is only the answer).

    The text of the labelled input's completion (the teacher's first sample that gave the label)
    before the label's span, with a trailing "The answer is" cut: the rationale of distilling
    step-by-step, written by the teacher itself.
    """
    from selfimprove.tasks.base import ANSWER_PREFIX

    text = row.get("completion") or ""
    span = row.get("completion_span")
    head = (text[: span[0]] if span else text).rstrip()
    if head.endswith(ANSWER_PREFIX):
        head = head[: -len(ANSWER_PREFIX)]
    return head.strip()


def with_prefix(prompt: Any, prefix: str) -> Any:
    """``prompt`` with ``prefix`` before its text (a plain prompt) or its last user message (chat)."""
    if not prefix:
        return prompt
    if isinstance(prompt, str):
        return prefix + prompt
    msgs = [dict(m) for m in prompt]
    for m in reversed(msgs):
        if m.get("role") == "user":
            m["content"] = prefix + str(m.get("content", ""))
            return msgs
    raise InputError(f"a prompt has no user message to put the task prefix {prefix!r} before: {prompt!r}")


def training_pairs(row: Mapping[str, Any], training: Any, task: Any) -> list[tuple[Any, str]]:
    """The (prompt, text) pairs the student trains on for one labelled input (``training.*``).

    ``label`` / ``completion``: one pair. ``rationale`` (distilling step-by-step, arXiv 2305.02301):
    the label task (``predict_prefix`` + prompt -> the label) and, when the teacher's sample has a
    worked solution, the rationale task (``explain_prefix`` + prompt -> that solution); with one
    row of each per input the SFT loss weighs the two tasks equally per row.
    """
    if training.target != "rationale":
        return [(row["prompt"], training_text(row, training.target, task))]
    pairs = [(with_prefix(row["prompt"], training.predict_prefix), label_text(task, row["teacher_label"]))]
    rationale = rationale_text(row)
    if rationale:
        pairs.append((with_prefix(row["prompt"], training.explain_prefix), rationale))
    return pairs


def eval_prefix(cfg: DistillConfig) -> str:
    """What a trained student's evaluation prompts start with (the predict prefix of ``rationale``)."""
    return cfg.training.predict_prefix if cfg.training.target == "rationale" else ""


def resolve_models(cfg: DistillConfig, progress: bool) -> tuple[str, str]:
    """(teacher model, student model folder), checked before the run folder is written."""
    from selfimprove.models.loading import resolve_model

    teacher = cfg.teacher.model
    if cfg.teacher.backend != "openai":
        try:
            teacher = resolve_model(teacher, progress=progress)
        except InputError as exc:
            raise InputError(f"teacher.model: {exc}") from None
    if cfg.teacher.adapter is not None:
        from selfimprove.generate._common import adapter_fingerprint

        try:
            adapter_fingerprint(cfg.teacher.adapter)
        except InputError as exc:
            raise InputError(f"teacher.adapter: {exc}") from None
    try:
        student = resolve_model(cfg.student.model, progress=progress)
    except InputError as exc:
        raise InputError(f"student.model: {exc}") from None
    if cfg.training.method == "gkd":
        from transformers import AutoTokenizer

        from selfimprove.train.gkd import check_same_tokenizer

        try:
            check_same_tokenizer(
                AutoTokenizer.from_pretrained(student, trust_remote_code=False),
                AutoTokenizer.from_pretrained(teacher, trust_remote_code=False),
                student,
                teacher,
            )
        except InputError as exc:
            raise InputError(f"training.method: {exc}") from None
    return teacher, student


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def variant_key(strategy: str, size: int | None) -> str:
    """Name of a selection variant (its folder under ``variants/``)."""
    return f"{strategy}-{'auto' if size is None else size}"


class _Run:
    def __init__(
        self,
        cfg: DistillConfig,
        run_dir: Path,
        state: Any,
        teacher: str,
        student: str,
        log: Callable[[str], None],
        progress: bool,
    ) -> None:
        self.cfg, self.dir, self.state, self.log, self.progress = cfg, run_dir, state, log, progress
        self.teacher_model, self.student_model = teacher, student
        self.task = load_task(cfg)
        self.engines = EnginePool(log=log)

    def teacher(self):
        """The teacher's engine (built on first use; closed once labelling and its evaluation are done)."""
        options = dict(self.cfg.teacher.options)
        if self.cfg.teacher.adapter is not None and self.cfg.teacher.backend == "vllm":
            options.setdefault("enable_lora", True)
        return self.engines.get("teacher", self.cfg.teacher.backend, self.teacher_model, options)

    def student(self):
        """The student's engine: the base student and each trained adapter (hot-swapped)."""
        options = dict(self.cfg.student.options)
        if self.cfg.student.backend == "vllm":
            options.setdefault("enable_lora", True)
        return self.engines.get("student", self.cfg.student.backend, self.student_model, options)

    def close_teacher(self) -> None:
        self.engines.release("teacher")

    def close(self) -> None:
        self.engines.close()

    # -- stage bookkeeping ------------------------------------------------------------------
    def fp(self, *parts: str, extra: Any = None) -> str:
        import hashlib
        import json

        d = self.cfg.to_dict()
        if d["training"].get("accelerate_config") is None:
            # A key added later: unset, it leaves the fingerprints of earlier run folders as they were.
            d["training"].pop("accelerate_config", None)
        blob = json.dumps([{k: d[k] for k in parts}, extra], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def stage(
        self, r: int, name: str, fp: str, fn: Callable[[], dict[str, Any]], order: Sequence[str]
    ) -> dict[str, Any]:
        """Run ``fn`` unless stage ``name`` of round ``r`` finished with fingerprint ``fp``."""
        rs = self.state.round(r)
        if self.state.done(r, name) and rs.get("fp", {}).get(name) == fp:
            return rs.get(name, {})
        if self.state.done(r, name):
            self.log(f"{name}: settings changed since it ran; redoing it and what follows")
        # Everything after this stage in the round depends on it.
        later = set(order[order.index(name) :])
        rs["done"] = [s for s in rs["done"] if s not in later]
        start = time.perf_counter()
        info = fn()
        rs.setdefault("fp", {})[name] = fp
        self.state.mark(r, name, time.perf_counter() - start, **{name: info})
        return info

    # -- shared stages ----------------------------------------------------------------------
    def label_fp(self) -> str:
        return self.fp("teacher", "task", "seed", "budget")

    def need_fp(self) -> str:
        tr = self.cfg.training
        extra = [self.label_fp(), tr.target]
        if tr.target == "rationale":
            extra.append(tr.predict_prefix)
        return self.fp("student", "need", extra=extra)

    def stage_label(self) -> dict[str, Any]:
        from selfimprove.distill.label import label_groups, sample_teacher
        from selfimprove.generate.base import Sampling
        from selfimprove.generate.store import RolloutStore

        t = self.cfg.teacher
        inputs = unlabeled_inputs(self.cfg, self.task)
        budget = self.cfg.budget.teacher_calls
        allowed = len(inputs) if budget is None else min(len(inputs), budget // t.k)
        inputs = inputs[:allowed]
        sampling = Sampling(
            n=t.k,
            temperature=t.temperature,
            top_p=t.top_p,
            max_tokens=t.max_tokens,
            stop=tuple(t.stop),
            seed=self.cfg.seed,
            logprobs=0 if t.logprobs else None,
        )
        store = RolloutStore(self.dir / "teacher")
        recs = sample_teacher(
            self.teacher(),
            inputs,
            sampling,
            store,
            self.task.extract,
            adapter=t.adapter,
            batch_size=t.batch_size,
            progress=self.progress,
        )
        by_id = {r["prompt_id"]: r for r in label_groups(recs)}
        rows = [by_id[i["prompt_id"]] for i in inputs if i["prompt_id"] in by_id]
        write_jsonl_atomic(self.dir / LABELS_FILE, rows)
        labelled = [r for r in rows if r["teacher_label"] is not None]
        if not labelled:
            extractor = getattr(self.task, "extractor", "?")
            raise InputError(
                f"the teacher gave no answer that the task's extractor ({extractor}) reads on any of its "
                f"{len(rows)} inputs; its samples are kept in {store.path}; check teacher.max_tokens, "
                "teacher.stop, task.extractor or task.instruction"
            )
        with_prob = [r for r in labelled if r["label_prob"] is not None]
        info = {
            "inputs": len(rows),
            "labelled": len(labelled),
            "abstained": len(rows) - len(labelled),
            "teacher_samples": len(recs),
            "vote_share_mean": sum(r["vote_share"] for r in labelled) / len(labelled),
            "label_prob_share": len(with_prob) / len(labelled),
            "budget": budget,
        }
        self.log(
            f"label: {info['labelled']} of {info['inputs']} inputs labelled from {info['teacher_samples']} "
            f"teacher samples (mean vote share {info['vote_share_mean']:.2f})"
        )
        return info

    def labelled_rows(self) -> list[dict[str, Any]]:
        return [r for r in read_jsonl(self.dir / LABELS_FILE) if r["teacher_label"] is not None]

    def stage_need(self) -> dict[str, Any]:
        from selfimprove.distill.label import answer_span
        from selfimprove.distill.scorer import StudentScorer

        rows = self.labelled_rows()
        # The need of the text the student is graded on: the first pair (the label task of `rationale`).
        pairs = [training_pairs(r, self.cfg.training, self.task)[0] for r in rows]
        texts = [text for _prompt, text in pairs]
        spans = None
        if self.cfg.need.span == "label":
            spans = [answer_span(t, r["teacher_label"]) for t, r in zip(texts, rows, strict=True)]
        scorer = StudentScorer(self.student_model, batch_size=self.cfg.need.batch_size)
        try:
            scores = scorer.score([p for p, _text in pairs], texts, spans, progress=self.progress)
        finally:
            scorer.close()
        out = [
            {
                "prompt_id": r["prompt_id"],
                "loss": s.loss or 0.0,
                "entropy": s.entropy or 0.0,
                "tokens": s.tokens,
            }
            for r, s in zip(rows, scores, strict=True)
        ]
        write_jsonl_atomic(self.dir / NEED_FILE, out)
        return {
            "scored": len(out),
            "entropy_mean": sum(o["entropy"] for o in out) / len(out),
            "loss_mean": sum(o["loss"] for o in out) / len(out),
        }

    def evaluate(self, gen: Any, out_dir: Path, adapter: str | None, prefix: str = "") -> dict[str, Any]:
        """pass@1, maj@k, pass@k of ``gen`` (with ``adapter``) on the held-out split; gold used here.

        ``prefix`` goes before each prompt (the predict prefix of a student trained on ``rationale``).
        """
        from selfimprove.eval.metrics import evaluate_answers
        from selfimprove.generate.base import Sampling
        from selfimprove.generate.store import RolloutStore, generate_rollouts

        prompts, gold = eval_split(self.cfg, self.task)
        prompts = [
            {**p, "prompt": with_prefix(p["prompt"], prefix)} for p in prompts if p["prompt_id"] in gold
        ]
        if not prompts:
            return {"skipped": "the eval split has no prompts with gold answers"}
        ev = self.cfg.evaluation
        sampling = Sampling(
            n=ev.n,
            temperature=ev.temperature,
            top_p=self.cfg.teacher.top_p,
            max_tokens=ev.max_tokens or self.cfg.teacher.max_tokens,
            stop=tuple(self.cfg.teacher.stop),
            seed=self.cfg.seed * 1000 + 7,
        )
        recs = generate_rollouts(
            gen,
            prompts,
            sampling,
            RolloutStore(out_dir),
            adapter=adapter,
            batch_size=self.cfg.teacher.batch_size,
            progress=self.progress,
        )
        answers: dict[str, list[str | None]] = {}
        for rec in sorted(recs, key=lambda r: r.get("sample_index", 0)):
            answers.setdefault(str(rec["prompt_id"]), []).append(self.task.extract(rec["completion"]))
        return evaluate_answers(answers, gold, self.task.check, ks=ev.k)

    def stage_eval_teacher(self) -> dict[str, Any]:
        out = self.dir / "eval" / "teacher"
        shutil.rmtree(out, ignore_errors=True)
        m = self.evaluate(self.teacher(), out, self.cfg.teacher.adapter)
        self.log(f"teacher on the held-out split: {_metrics_line(m)}")
        return m

    def stage_eval_student(self) -> dict[str, Any]:
        out = self.dir / "eval" / "student_before"
        shutil.rmtree(out, ignore_errors=True)
        m = self.evaluate(self.student(), out, None)
        self.log(f"student before training: {_metrics_line(m)}")
        return m

    # -- variants ---------------------------------------------------------------------------
    def candidates(self) -> list[Any]:
        from selfimprove.distill.selection import candidates

        need = {r["prompt_id"]: r for r in read_jsonl(self.dir / NEED_FILE)}
        items = [{**r, **need[r["prompt_id"]]} for r in self.labelled_rows()]
        return candidates(items, self.cfg.selection.confidence, self.cfg.selection.need)

    def settings(self) -> Any:
        from selfimprove.distill.selection import SelectionSettings

        s = self.cfg.selection
        return SelectionSettings(
            threshold=s.threshold,
            momentum=s.momentum,
            stream_batch=s.stream_batch,
            min_class_count=s.min_class_count,
            fixed_confidence=s.fixed_confidence,
            fixed_need=s.fixed_need,
            weight=s.weight,
            weight_min=s.weight_min,
            weight_max=s.weight_max,
            fill=s.fill,
        )

    def resolved_size(self, size: int | None, cands: Sequence[Any]) -> int | None:
        """A null size: the number llkd keeps (when llkd is compared), else every labelled input."""
        from selfimprove.distill.selection import select

        if size is not None:
            return size
        if "llkd" in self.cfg.selection.strategies:
            return len(select(cands, "llkd", None, self.settings(), seed=self.cfg.seed).rows) or None
        return len(cands)

    def variant_round(self, key: str) -> int:
        rounds = self.state.data.setdefault("variants", {})
        if key not in rounds:
            rounds[key] = max([0, *rounds.values()]) + 1
            self.state.save()
        return rounds[key]

    def variant_fp(self, strategy: str, size: int | None) -> str:
        sel = {k: v for k, v in self.cfg.to_dict()["selection"].items() if k not in ("strategies", "sizes")}
        return self.fp("training", "evaluation", extra=[self.need_fp(), sel, strategy, size])

    def stage_select(self, vdir: Path, strategy: str, size: int | None) -> dict[str, Any]:
        from selfimprove.distill.selection import select

        shutil.rmtree(vdir, ignore_errors=True)
        cands = self.candidates()
        n = self.resolved_size(size, cands)
        sel = select(cands, strategy, n, self.settings(), seed=self.cfg.seed)
        write_jsonl_atomic(vdir / "selection.jsonl", sel.rows)
        info = {
            "strategy": strategy,
            "size": n,
            "candidates": sel.candidates,
            "selected": len(sel.rows),
            "passed": sel.passed,
            "filled": sel.filled,
            "weight_mean": _mean([r["weight"] for r in sel.rows]),
            "weight_min": min((r["weight"] for r in sel.rows), default=None),
            "weight_max": max((r["weight"] for r in sel.rows), default=None),
            "confidence_mean": _mean([r["confidence"] for r in sel.rows]),
            "need_mean": _mean([r["need"] for r in sel.rows]),
        }
        if not sel.rows:
            self.log(f"{vdir.name}: the selection kept no input; this variant trains nothing")
        return info

    def stage_train(self, vdir: Path, seed: int) -> dict[str, Any]:
        from selfimprove.data.build import _as_completion
        from selfimprove.distill.selection import weighted_rows

        selected = read_jsonl(vdir / "selection.jsonl")
        if not selected:
            return {"skipped": "the selection kept no input"}
        by_id = {r["prompt_id"]: r for r in self.labelled_rows()}
        tr = self.cfg.training
        # One group of rows per selected input (two for `rationale`); weights repeat whole groups.
        groups = [
            [
                {"prompt": prompt, "completion": _as_completion(prompt, text)}
                for prompt, text in training_pairs(by_id[s["prompt_id"]], tr, self.task)
            ]
            for s in selected
        ]
        weights = [float(s["weight"]) for s in selected]
        weighted = tr.weighted and len(set(weights)) > 1
        if weighted:
            groups = weighted_rows(groups, weights, len(groups), seed)
        rows = [row for group in groups for row in group]
        write_jsonl_atomic(vdir / "train_rows.jsonl", rows)
        result = train_student(self.cfg, self.student_model, rows, vdir / "adapter", seed, self.progress)
        losses = result.loss_history
        return {
            "rows": len(rows),
            "rationale_rows": sum(len(g) - 1 for g in groups) if tr.target == "rationale" else None,
            "weighted": weighted,
            "steps": result.steps,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "dropped": result.dropped,
            "seconds": result.seconds,
            "world_size": result.world_size,
        }

    def stage_evaluate(self, vdir: Path) -> dict[str, Any]:
        if not (vdir / "adapter" / "adapter_config.json").exists():
            return {"skipped": "no adapter was trained"}
        out = vdir / "eval"
        shutil.rmtree(out, ignore_errors=True)
        m = self.evaluate(self.student(), out, str((vdir / "adapter").resolve()), eval_prefix(self.cfg))
        self.log(f"{vdir.name}: student after training: {_metrics_line(m)}")
        return m

    # -- the whole run ----------------------------------------------------------------------
    def run(self, until: str | None) -> dict[str, Any]:
        ev = self.cfg.evaluation
        self.stage(0, "label", self.label_fp(), self.stage_label, ("label",))
        if until == "label":
            return self.summary()
        if ev.enabled and ev.teacher:
            self.stage(
                0,
                "eval_teacher",
                self.fp("teacher", "task", "seed", "evaluation"),
                self.stage_eval_teacher,
                ("eval_teacher",),
            )
        self.close_teacher()
        self.stage(0, "need", self.need_fp(), self.stage_need, ("need",))
        if until == "need":
            return self.summary()
        if ev.enabled and ev.student_before and until is None:
            self.stage(
                0,
                "eval_student",
                self.fp("student", "task", "seed", "evaluation"),
                self.stage_eval_student,
                ("eval_student",),
            )
        for strategy in self.cfg.selection.strategies:
            for size in self.cfg.selection.sizes:
                key = variant_key(strategy, size)
                r = self.variant_round(key)
                vdir = self.dir / "variants" / key
                fp = self.variant_fp(strategy, size)
                self.stage(r, "select", fp, partial(self.stage_select, vdir, strategy, size), VARIANT_STAGES)
                if until == "select":
                    continue
                self.stage(r, "train", fp, partial(self.stage_train, vdir, self.cfg.seed), VARIANT_STAGES)
                if ev.enabled:
                    self.stage(r, "evaluate", fp, partial(self.stage_evaluate, vdir), VARIANT_STAGES)
        summary = self.summary()
        if until is None:
            self.state.data["finished"] = True
            self.state.save()
        return summary

    def summary(self) -> dict[str, Any]:
        r0 = self.state.round(0)
        variants = []
        for key, r in sorted(self.state.data.get("variants", {}).items(), key=lambda kv: kv[1]):
            strategy, _, size = key.rpartition("-")
            if strategy not in self.cfg.selection.strategies:
                continue
            if (None if size == "auto" else int(size)) not in self.cfg.selection.sizes:
                continue
            rs = self.state.round(r)
            variants.append(
                {
                    "key": key,
                    "round": r,
                    "select": rs.get("select"),
                    "train": rs.get("train"),
                    "evaluate": rs.get("evaluate"),
                }
            )
        summary = {
            "name": self.cfg.name,
            "label": r0.get("label"),
            "need": r0.get("need"),
            "teacher": r0.get("eval_teacher"),
            "student_before": r0.get("eval_student"),
            "variants": variants,
        }
        write_json_atomic(self.dir / RESULTS_FILE, summary)
        return summary


def train_student(
    cfg: DistillConfig,
    student_model: str,
    rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    seed: int,
    progress: bool,
) -> Any:
    """LoRA training of the student on ``rows`` into ``out_dir`` (``training.*``: SFT, or GKD towards
    the teacher); return the TrainResult.

    With ``training.accelerate_config`` it runs under ``accelerate launch`` (each process calls
    :func:`train_student_launched`, which calls this function in-process).
    """
    tr = cfg.training
    if tr.accelerate_config is not None:
        from selfimprove.train.launch import launch_training

        payload = {"config": cfg.to_dict(), "model": student_model, "seed": seed, "progress": progress}
        return launch_training(
            "selfimprove.distill.runner:train_student_launched",
            payload,
            rows,
            out_dir,
            accelerate_config=tr.accelerate_config,
            progress=progress,
        )
    from selfimprove.train.common import LoraSettings

    lora = LoraSettings(
        r=tr.lora.rank,
        alpha=int(tr.lora.alpha),
        dropout=tr.lora.dropout,
        target_modules=tr.lora.target_modules
        if isinstance(tr.lora.target_modules, str)
        else tuple(tr.lora.target_modules),
    )
    args: dict[str, Any] = {
        "learning_rate": tr.learning_rate,
        "num_train_epochs": tr.epochs,
        "per_device_train_batch_size": tr.batch_size,
        "disable_tqdm": not progress,
    }
    if tr.max_steps is not None:
        args["max_steps"] = tr.max_steps
    if tr.max_length is not None:
        args["max_length"] = tr.max_length
    args.update(tr.trl)
    if tr.method == "gkd":
        from selfimprove.models.loading import resolve_model
        from selfimprove.train.gkd import train_gkd

        teacher = resolve_model(cfg.teacher.model, progress=False)
        return train_gkd(
            student_model,
            teacher,
            rows,
            out_dir,
            teacher_adapter=cfg.teacher.adapter,
            lora=lora,
            args=args,
            seed=seed,
        )
    from selfimprove.train.sft import train_sft

    return train_sft(student_model, rows, out_dir, lora=lora, args=args, seed=seed)


def train_student_launched(
    payload: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], out_dir: Path
) -> Any:
    """:func:`train_student` in one of the processes of ``accelerate launch`` (see selfimprove.train.launch)."""
    cfg = DistillConfig.model_validate(payload["config"])  # checked in full when the job loaded it
    cfg.training.accelerate_config = None  # this process trains
    return train_student(
        cfg, payload["model"], rows, out_dir, int(payload["seed"]), bool(payload["progress"])
    )


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _metrics_line(m: Mapping[str, Any]) -> str:
    if "skipped" in m:
        return f"skipped ({m['skipped']})"
    parts = [f"{k} {100 * v:.1f}%" for k, v in m.items() if k.startswith(("pass@", "maj@"))]
    return ", ".join(parts)


def _as_config(
    config: str | Path | Mapping[str, Any] | DistillConfig, overrides: Sequence[str]
) -> DistillConfig:
    if isinstance(config, DistillConfig):
        if overrides:
            return config_from_dict(config.to_dict(), overrides, name=config.name or "distill")
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config, overrides)
    return load_config(config, overrides)


def distill(
    config: str | Path | Mapping[str, Any] | DistillConfig,
    run_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    report: bool = True,
    until: str | None = None,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> DistillResult:
    """Label the task's unlabeled inputs with the teacher, select, train the student, evaluate.

    ``config``: a YAML path, a dict or a :class:`DistillConfig` (``overrides``: ``key.sub=value``).
    ``resume`` continues ``run_dir`` (also after ``kill -9``); ``force`` resumes even though the
    teacher or task changed. ``until`` (``label``, ``need``, ``select``) stops after that stage.
    """
    if until is not None and until not in UNTIL:
        raise ValueError(f"until must be one of {UNTIL} or None, got {until!r}")
    cfg = _as_config(config, overrides)
    logger = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    teacher, student = resolve_models(cfg, progress)
    run_dir = Path(run_dir)
    with folder_lock(run_dir):
        state, resumed = open_state(run_dir, cfg.fingerprint(), resume=resume, force=force, stages=STAGES)
        write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
        fields = {
            "name": cfg.name,
            "job": "distill",
            "config_hash": cfg.fingerprint(),
            "seeds": {"run": cfg.seed, "task": cfg.task.seed},
            "teacher": {"backend": cfg.teacher.backend, "model": teacher, "adapter": cfg.teacher.adapter},
            "student": {"backend": cfg.student.backend, "model": student},
        }
        write_manifest(run_dir, fields, command=command, resumed=resumed)
        state.save()
        runner = _Run(cfg, run_dir, state, teacher, student, logger, progress)
        try:
            summary = runner.run(until)
        finally:
            runner.close()
        if report and until is None:
            from selfimprove.distill.report import write_report

            write_report(run_dir, cfg, runner.task)
    return DistillResult(run_dir=run_dir, summary=summary)


__all__ = [
    "STAGES",
    "DistillResult",
    "distill",
    "eval_split",
    "eval_prefix",
    "label_text",
    "load_task",
    "rationale_text",
    "training_pairs",
    "training_text",
    "unlabeled_inputs",
    "variant_key",
]
