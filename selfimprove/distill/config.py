"""The distillation config: teacher, student, task, selection, training, evaluation, budget.

One YAML file describes a run of ``selfimprove distill``. Unknown keys are errors with the file,
line and a "did you mean"; ``key.sub=value`` overrides are validated the same way (the shared
loader of :mod:`selfimprove.config`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from selfimprove.config.loader import KeySource, Section, check_kwargs, dump_yaml, load_named
from selfimprove.config.sections import (
    TaskSource,
    accelerate_config_field,
    check_accelerate_config,
    task_name_field,
)
from selfimprove.errors import ConfigError
from selfimprove.loop.config import LoraConfig

STRATEGIES = ("all", "random", "confidence", "need", "llkd")


class TeacherConfig(Section):
    """The model that labels the unlabeled inputs (any backend, optionally with a LoRA adapter)."""

    model: str = Field(
        description="Local model folder (vllm, hf), `builtin:<task>` (the embedded base model of a bundled "
        "task) or a served model name (openai)."
    )
    backend: Literal["vllm", "hf", "openai"] = Field("vllm", description="Generation backend of the teacher.")
    adapter: str | None = Field(
        None,
        description="A PEFT LoRA adapter folder applied on the teacher (e.g. the adapter of a self-training "
        "run: a self-trained model can be the teacher); null: none.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword options of the backend's constructor (e.g. `enforce_eager`, `max_model_len` for "
        "vllm; `batch_size` for hf; `base_url`, `api_key_env` for openai).",
    )
    k: int = Field(8, ge=1, description="Samples per unlabeled input; their majority vote is the label.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the teacher.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(64, ge=1, description="Maximum new tokens per teacher sample.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (cut from the completion).")
    logprobs: bool = Field(
        True,
        description="Ask the backend for token log-probabilities, to measure the probability of the label's "
        "tokens (`label_prob`); a backend that returns none leaves it empty (vote share only).",
    )
    batch_size: int = Field(
        32, ge=1, description="Inputs per teacher call; samples are saved after each (the resume unit)."
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model")
        return v


class StudentConfig(Section):
    """The model that is fine-tuned (a LoRA adapter) on the selected teacher labels."""

    model: str = Field(description="Local Hugging Face model folder (safetensors) or `builtin:<task>`.")
    backend: Literal["vllm", "hf"] = Field(
        "hf", description="Backend that generates the student's evaluation samples (`hf` or `vllm`)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options of the student's backend constructor."
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a model folder path or builtin:<task>")
        return v


class DistillTaskConfig(TaskSource):
    """The unlabeled inputs (the task's train split) and the held-out evaluation split."""

    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("unlabeled_size", "eval_size")

    name: str | None = task_name_field("string_ops")
    unlabeled_size: int | None = Field(
        128, ge=1, description="Unlabeled inputs drawn from the train split (null: all rows of a user file)."
    )


class BudgetConfig(Section):
    """How much teacher work a run may spend."""

    teacher_calls: int | None = Field(
        None,
        ge=0,
        description="Most teacher samples (inputs x `teacher.k`) the labelling may generate; inputs beyond it "
        "stay unlabeled. Raising it and resuming labels more inputs. null: no limit.",
    )


class NeedConfig(Section):
    """The student's need of a teacher label: its loss and entropy on the training text, teacher-forced."""

    span: Literal["completion", "label"] = Field(
        "completion",
        description="Tokens measured: the whole training completion, or only the label's tokens in it (the "
        "whole completion when the label is not found in it).",
    )
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass of the scorer.")


class SelectionConfig(Section):
    """Which teacher labels the student trains on (pluggable parts, compared side by side)."""

    strategies: list[Literal["all", "random", "confidence", "need", "llkd"]] = Field(
        default_factory=lambda: ["llkd"],
        description="Strategies to run side by side, each training its own student adapter: `all`, `random`, "
        "`confidence` (top by confidence), `need` (top by need), `llkd` (confidence AND need above adaptive "
        "per-class thresholds, weighted).",
    )
    sizes: list[int | None] = Field(
        default_factory=lambda: [None],
        description="Numbers of selected samples (a budget curve); every strategy runs at each. null: the "
        "number `llkd` keeps (when it is among the strategies), else every labelled input.",
    )
    confidence: Literal["auto", "vote_share", "label_prob"] = Field(
        "vote_share",
        description="Teacher confidence: `vote_share` (share of the k samples that gave the label), "
        "`label_prob` (mean probability of the label's tokens over the agreeing samples), `auto` "
        "(label_prob where the backend returned log-probabilities, else vote_share). `label_prob` "
        "says nothing when the label follows a worked solution (the answer tokens are near-certain "
        "given the solution, right or wrong): on arithmetic it kept labels no more accurate than the "
        "dropped ones, vote share did (benchmarks/results/distill/).",
    )
    need: Literal["entropy", "loss"] = Field(
        "entropy",
        description="Student need: mean entropy of its next-token distribution, or its mean loss (NLL), "
        "on the training text (see `need.span`).",
    )
    threshold: Literal["adaptive", "fixed", "none"] = Field(
        "adaptive",
        description="llkd's keep rule: `adaptive` (per-class moving averages of confidence and need over a "
        "seeded stream of batches), `fixed` (`fixed_confidence`, `fixed_need`), `none` (keep all, weights only).",
    )
    momentum: float = Field(
        0.9, ge=0, lt=1, description="Moving-average momentum of the adaptive thresholds (per batch)."
    )
    stream_batch: int = Field(
        16, ge=1, description="Inputs per batch of the adaptive stream (thresholds update after each)."
    )
    min_class_count: int = Field(
        3,
        ge=1,
        description="Classes (labels) with fewer labelled inputs share the global thresholds.",
    )
    fixed_confidence: float = Field(0.5, ge=0, description="Confidence threshold of `threshold: fixed`.")
    fixed_need: float = Field(0.0, ge=0, description="Need threshold of `threshold: fixed`.")
    weight: Literal["none", "confidence", "need", "product"] = Field(
        "product",
        description="llkd's sample weights: relative confidence, relative need, their product, or none (all 1).",
    )
    weight_min: float = Field(0.5, gt=0, description="Lower bound of a sample weight.")
    weight_max: float = Field(2.0, gt=0, description="Upper bound of a sample weight.")
    fill: bool = Field(
        True,
        description="When llkd keeps fewer than a size asks, fill up with the best-ranked other inputs "
        "(rank of confidence x rank of need), so strategies compare at equal numbers.",
    )

    @model_validator(mode="after")
    def _check(self) -> SelectionConfig:
        if not self.strategies:
            raise ValueError("list at least one strategy")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError("a strategy is listed twice")
        if not self.sizes:
            raise ValueError("list at least one size (null: llkd's own number)")
        if any(s is not None and s < 1 for s in self.sizes):
            raise ValueError("every size must be >= 1 (or null)")
        if self.weight_min > self.weight_max:
            raise ValueError(f"weight_min ({self.weight_min}) is above weight_max ({self.weight_max})")
        return self


class DistillTrainingConfig(Section):
    """LoRA training of the student on the selected labels (SFT, or token-level distillation via TRL's GKD)."""

    method: Literal["sft", "gkd"] = Field(
        "sft",
        description="`sft`: LoRA SFT on the training texts (labels travel as text: any teacher, any "
        "tokenizer). `gkd`: token-level distillation through TRL's GKD trainer on the same texts: the "
        "student matches the teacher's next-token distributions (generalized JSD; `training.trl.beta`, "
        "`training.trl.lmbda` = share of on-policy batches, 0 by default); needs a local teacher (vllm or "
        "hf backend) with the student's tokenizer.",
    )

    target: Literal["label", "completion", "rationale"] = Field(
        "completion",
        description="What the student learns to write: `label` (the label in the task's answer format, "
        "e.g. 'The answer is X.'), `completion` (the teacher's first sample that gave the label: its "
        "worked solution and the label) or `rationale` (distilling step-by-step: two rows per input, "
        "`predict_prefix` + prompt -> the label and `explain_prefix` + prompt -> the worked solution of "
        "that sample without its answer sentence; the trained student is evaluated with the predict "
        "prefix and writes only the label).",
    )
    predict_prefix: str = Field(
        "predict: ",
        description="`target: rationale`: text put before the prompt of the label task (and of every "
        "evaluation prompt of the trained student).",
    )
    explain_prefix: str = Field(
        "explain: ", description="`target: rationale`: text put before the prompt of the rationale task."
    )
    weighted: bool = Field(
        True,
        description="Use the selection's weights: training rows are drawn with probability proportional to "
        "the weight (seeded), which is the weighted SFT loss in expectation; false: every row once.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    learning_rate: float = Field(2e-4, gt=0, description="Learning rate.")
    epochs: float = Field(1.0, gt=0, description="Epochs over the selected rows.")
    max_steps: int | None = Field(None, ge=1, description="Cap on optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1, description="Per-device batch size.")
    max_length: int | None = Field(None, ge=8, description="Maximum sequence length (longer rows dropped).")
    trl: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other field of TRL's SFTConfig (`method: sft`) or GKDConfig (`method: gkd`), checked "
        "against it.",
    )
    accelerate_config: str | None = accelerate_config_field()

    @model_validator(mode="after")
    def _prefixes(self) -> DistillTrainingConfig:
        if self.target == "rationale" and self.predict_prefix == self.explain_prefix:
            raise ValueError(
                f"predict_prefix and explain_prefix are both {self.predict_prefix!r}: the student could not "
                "tell the label task from the rationale task"
            )
        return self


class DistillEvaluationConfig(Section):
    """Held-out evaluation: gold answers are used here and in the report's selection statistics only."""

    enabled: bool = Field(True, description="Evaluate at all (off: no gold is read by the run).")
    n: int = Field(8, ge=1, description="Samples per evaluation prompt.")
    k: list[int] = Field(default_factory=lambda: [8], description="k values of maj@k and pass@k (each <= n).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of evaluation.")
    max_tokens: int | None = Field(None, ge=1, description="Maximum new tokens; null: `teacher.max_tokens`.")
    teacher: bool = Field(True, description="Evaluate the teacher too (the accuracy the student aims at).")
    student_before: bool = Field(True, description="Evaluate the student before training.")

    @model_validator(mode="after")
    def _k(self) -> DistillEvaluationConfig:
        if not self.k:
            raise ValueError("k must list at least one value")
        bad = [k for k in self.k if k < 1 or k > self.n]
        if bad:
            raise ValueError(f"every k must be in 1..n={self.n}; got {bad}")
        return self


class DistillConfig(Section):
    """A teacher -> student distillation run on unlabeled inputs."""

    name: str | None = Field(None, description="Run name (default: the config file name).")
    seed: int = Field(0, description="Seed of sampling, selection and training.")
    teacher: TeacherConfig = Field(description="The teacher.")
    student: StudentConfig = Field(description="The student.")
    task: DistillTaskConfig = Field(
        default_factory=DistillTaskConfig, description="Inputs and evaluation split."
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Teacher budget.")
    need: NeedConfig = Field(default_factory=NeedConfig, description="The student-need scorer.")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="Selection strategies.")
    training: DistillTrainingConfig = Field(
        default_factory=DistillTrainingConfig, description="Student training."
    )
    evaluation: DistillEvaluationConfig = Field(
        default_factory=DistillEvaluationConfig, description="Held-out evaluation."
    )

    def part_fingerprint(self, *keys: str) -> str:
        """A digest of the named top-level sections (what a stage's results depend on)."""
        d = self.to_dict()
        part = {k: d[k] for k in keys}
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        """The run folder's identity: the teacher, the task and the seed (what the labels depend on).

        Selection, training, evaluation and budget may change on ``--resume``: the stages that
        depend on a changed section are redone, the teacher's labels are kept.
        """
        return self.part_fingerprint("teacher", "task", "seed")


def teacher_is_builtin(cfg: DistillConfig) -> bool:
    """Whether the teacher is an embedded base model (prompts then go without the format instruction)."""
    return cfg.teacher.model.startswith("builtin:")


def _backend_init(backend: str) -> Any:
    if backend == "hf":
        from selfimprove.generate.hf_backend import HFGenerator

        return HFGenerator.__init__
    if backend == "openai":
        from selfimprove.generate.openai_backend import OpenAIGenerator

        return OpenAIGenerator.__init__
    from selfimprove.generate.vllm_backend import VLLMGenerator

    return VLLMGenerator.__init__


def check_config(cfg: DistillConfig, where: KeySource) -> None:
    """Checks beyond the schema (file:line errors): budget, backend options, TRL fields, k values."""
    k = cfg.teacher.k
    calls = cfg.budget.teacher_calls
    if calls is not None and calls < k:
        raise ConfigError(
            f"{where(('budget', 'teacher_calls'))}budget.teacher_calls: {calls} teacher samples cannot label "
            f"a single input (each takes teacher.k = {k}); give at least {k}, or null for no limit"
        )
    check_kwargs(
        _backend_init(cfg.teacher.backend), cfg.teacher.options, "teacher.options", where, ["self", "model"]
    )
    check_kwargs(
        _backend_init(cfg.student.backend), cfg.student.options, "student.options", where, ["self", "model"]
    )
    check_accelerate_config(cfg.training.accelerate_config, where)
    if cfg.training.method == "gkd" and cfg.teacher.backend == "openai":
        raise ConfigError(
            f"{where(('training', 'method'))}training.method: gkd needs the teacher's weights (its next-token "
            "distributions); teacher.backend is openai: use a local teacher (vllm or hf) or training.method: sft"
        )
    if cfg.training.trl:
        import dataclasses

        if cfg.training.method == "gkd":
            from selfimprove.train.gkd import gkd_classes

            TrlConfig = gkd_classes()[0]
        else:
            from trl import SFTConfig as TrlConfig

        known = {f.name for f in dataclasses.fields(TrlConfig)}
        for key in cfg.training.trl:
            if key not in known:
                from selfimprove.config.loader import suggest

                raise ConfigError(
                    f"{where(('training', 'trl', key))}training.trl.{key}: not a field of TRL's "
                    f"{TrlConfig.__name__}{suggest(key, sorted(known))}"
                )


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DistillConfig:
    """Read a distillation config with overrides; errors name file:line and the key."""
    return load_named(Path(path), DistillConfig, overrides, check=check_config)


def config_from_dict(
    data: Mapping[str, Any], overrides: Sequence[str] = (), *, name: str = "distill"
) -> DistillConfig:
    """Validate a config given as a dict (e.g. from Python) the same way as a file."""
    return load_named(data, DistillConfig, overrides, check=check_config, default_name=name)


def dump_config(cfg: DistillConfig) -> str:
    """The resolved config as YAML text."""
    return dump_yaml(cfg)


def update_docs(path: str | Path) -> bool:
    """Rewrite the schema table of docs/distill.md (between the schema markers); True if changed."""
    from selfimprove.config.docs import update_docs as _update_docs

    return _update_docs(path, DistillConfig)


__all__ = [
    "STRATEGIES",
    "BudgetConfig",
    "DistillConfig",
    "DistillEvaluationConfig",
    "DistillTaskConfig",
    "DistillTrainingConfig",
    "NeedConfig",
    "SelectionConfig",
    "StudentConfig",
    "TeacherConfig",
    "check_config",
    "config_from_dict",
    "dump_config",
    "load_config",
    "teacher_is_builtin",
    "update_docs",
]


if __name__ == "__main__":
    import sys

    for target in sys.argv[1:] or ["docs/distill.md"]:
        print(f"{target}: {'updated' if update_docs(target) else 'up to date'}")
