"""The run config: one YAML file describes a whole self-training run, validated on load.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key is an error, not a
silently ignored setting. Errors are turned into :class:`~selfimprove.errors.ConfigError` messages
that name the YAML file and line, the key path (``training.lora.rank``), what is allowed, and a
"did you mean" suggestion. Command-line overrides (``key.sub=value``, the value parsed as YAML) are
merged before validation and checked the same way.

Options that belong to another module (builder keyword arguments, TRL trainer fields) are checked
against that module's own signature when it is importable, so a typo there is caught at load time
too instead of after an hour of generation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from selfimprove.config.loader import KeyPath, apply_overrides, dump_yaml, load, parse_override, validate
from selfimprove.config.loader import KeySource as _Where
from selfimprove.config.loader import Section as _Section
from selfimprove.config.loader import check_kwargs as _check_kwargs
from selfimprove.config.loader import suggest as _suggest
from selfimprove.config.sections import (
    TaskSource,
    accelerate_config_field,
    check_accelerate_config,
    task_name_field,
)
from selfimprove.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


class ModelConfig(_Section):
    """The policy model that rounds of self-training improve (LoRA adapters on top of it)."""

    path: str = Field(
        "builtin:arithmetic",
        description="Local Hugging Face model folder (safetensors), or `builtin:<task>` for the "
        "embedded base model of that task that ships with the package (`selfimprove build-base` rebuilds it).",
    )
    trust_remote_code: bool = Field(
        False, description="Allow custom modelling code from the model folder. Off by default for safety."
    )

    @field_validator("path")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a model folder path or builtin:<task>")
        return v


class TaskConfig(TaskSource):
    """Where prompts come from: a bundled synthetic task, or your own JSONL file."""

    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("train_size", "eval_size")

    name: str | None = task_name_field("arithmetic")
    train_size: int | None = Field(
        64, ge=1, description="Prompts in the label-free self-training split (null: all rows of a user file)."
    )
    resample_each_round: bool = Field(
        False,
        description="Draw new train prompts every round (seed + round) instead of self-training on the same "
        "set (TTRL-style test-time training uses one fixed set). The eval split never changes.",
    )
    chat_template: bool | None = Field(
        None,
        description="Render a user task's plain-text prompts with the model's chat template (each becomes one "
        "user message). null: send them as raw text, with a warning when the model has a chat template; "
        "false: raw text, no warning. Chat-message prompts (and the bundled tasks) always use the template.",
    )
    long_prompts: Literal["error", "skip"] = Field(
        "error",
        description="A prompt longer than the model's context (counted with the model's tokenizer before the "
        "run folder is written): `error` refuses to start and names the prompt; `skip` leaves it out of its "
        "split, counted in the log, `summary.json` and the report.",
    )

    system_prompt: str | None = Field(
        None,
        description="System message put before every train and eval prompt (the prompt a model is "
        "self-trained with); null: none. Exclusive with `system_prompt_file`.",
    )
    system_prompt_file: str | None = Field(
        None,
        description="Text file whose content is the system message, read when the run starts or resumes; "
        "e.g. `best_prompt.txt` of a `selfimprove optimize-prompt` workspace (prompt, then weights).",
    )

    @model_validator(mode="after")
    def _system_prompt(self) -> TaskConfig:
        if self.system_prompt is not None and self.system_prompt_file is not None:
            raise ValueError("task.system_prompt and task.system_prompt_file are exclusive")
        return self


class GenerationConfig(_Section):
    """Sampling of rollouts for the self-training split."""

    backend: Literal["vllm", "hf", "openai"] = Field(
        "vllm",
        description="Generation backend: `vllm` (fast, adapters swapped in place), `hf` (transformers) or `openai`.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword options for the chosen backend's constructor, checked against it when the config "
        "loads. Options only one backend takes belong under `generation.vllm`, `generation.hf` or "
        "`generation.openai`, so that switching `generation.backend` never breaks a config.",
    )
    vllm: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the vllm backend, read only when `backend` is `vllm` (e.g. `enforce_eager`, "
        "`kv_cache_gb`, `max_model_len`, `adapter_serving`; other keys go to vLLM's engine arguments).",
    )
    hf: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the hf backend, read only when `backend` is `hf` (`device`, `dtype`, `batch_size`).",
    )
    openai: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the openai backend, read only when `backend` is `openai`: `base_url` (required "
        "there), `api_key_env`, `max_concurrency`, `timeout`, `max_retries`, `backoff`. API keys come from env "
        "vars only.",
    )
    n: int = Field(8, ge=1, description="Samples per prompt; all of them vote on the pseudo-label.")
    n_train: int | None = Field(
        None,
        ge=1,
        description="How many of the `n` samples per prompt are used to build training data (TTRL votes "
        "on more samples than it trains on). Null: all `n`.",
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(64, ge=1, description="Maximum new tokens per completion.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (cut from the completion).")
    batch_size: int = Field(
        64, ge=1, description="Prompts per generation call; rollouts are saved after each (resume unit)."
    )

    @model_validator(mode="after")
    def _n_train(self) -> GenerationConfig:
        if self.n_train is not None and self.n_train > self.n:
            raise ValueError(f"n_train ({self.n_train}) cannot exceed n ({self.n})")
        return self

    def backend_options(self) -> dict[str, Any]:
        """The constructor options of the chosen backend: ``options`` plus its own section."""
        return {**self.options, **getattr(self, self.backend)}


class RewardTerm(_Section):
    """One term of the reward: a registered reward function, its weight and options."""

    name: str = Field(description="Reward name in `selfimprove.score.rewards.REWARDS`, e.g. `majority_vote`.")
    weight: float = Field(1.0, description="Weight of this term in the total reward.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options for `get_reward(name, **options)`."
    )


# Options of the loop's judges beyond the judge constructors' own keywords.
_JUDGE_SAMPLING_OPTIONS = ("max_tokens", "temperature")
_JUDGE_LOOP_OPTIONS = {"pointwise": (), "pairwise": ("opponents",)}
# Constructor keywords the loop sets itself.
_JUDGE_RESERVED = ("generator", "adapter", "sampling", "progress")


def _judge_option_names(kind: str) -> list[str]:
    """Option names a loop judge of ``kind`` accepts (constructor keywords plus loop options)."""
    from selfimprove.score.judges import JUDGES

    params = inspect.signature(JUDGES[kind].__init__).parameters
    names = [n for n in params if n != "self" and n not in _JUDGE_RESERVED]
    return [*names, *_JUDGE_SAMPLING_OPTIONS, *_JUDGE_LOOP_OPTIONS[kind]]


class JudgeConfig(_Section):
    """A judge that scores rollouts (self-rewarding: the policy judges itself)."""

    kind: Literal["pointwise", "pairwise"] = Field(
        "pointwise",
        description="`pointwise`: a rubric score per response (`judge_score` on the rubric's scale). "
        "`pairwise`: each response is compared, in both orders, with other responses to the same prompt; "
        "`judge_score` = its mean soft win probability in [0, 1] (null when no comparison succeeded).",
    )
    model: str = Field(
        "policy",
        description="`policy` (the current policy with its adapter judges itself) or another model (a folder "
        "path, or a served model's name with the openai backend), run on `generation.backend` with its "
        "backend-scoped options (`generation.vllm` / `hf` / `openai`).",
    )
    weight: float = Field(1.0, description="Weight of the judge score in the total reward.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword options of the judge, plus `max_tokens` and `temperature` of its replies. "
        "pointwise: `template`, `n_repeats`, `min_score`, `max_score`. pairwise: `mode` (`text` or "
        "`logprob`), `requirements`, `template`, `n_repeats`, `top_logprobs`, and `opponents` (`all`, or "
        "N: comparisons per response, drawn with the loop seed).",
    )

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any], info: Any) -> dict[str, Any]:
        kind = info.data.get("kind")
        if kind is None:  # kind itself was invalid: that error is reported
            return v
        allowed = _judge_option_names(kind)
        for name in v:
            if allowed and name not in allowed:
                raise ValueError(
                    f"{name!r} is not an option of the {kind} judge{_suggest(name, allowed)}; "
                    f"allowed: {', '.join(allowed)}"
                )

        def integer(name: str, low: int) -> None:
            x = v.get(name)
            if name in v and (isinstance(x, bool) or not isinstance(x, int) or x < low):
                raise ValueError(f"{name} must be an integer >= {low}, got {x!r}")

        integer("n_repeats", 1)
        integer("max_tokens", 1)
        integer("top_logprobs", 1)
        t = v.get("temperature")
        if "temperature" in v and (isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0):
            raise ValueError(f"temperature must be a number >= 0, got {t!r}")
        if kind == "pairwise":
            if v.get("mode", "text") not in ("text", "logprob"):
                raise ValueError(f"mode must be 'text' or 'logprob', got {v['mode']!r}")
            from selfimprove.score.judges import check_opponents

            try:
                check_opponents(v.get("opponents", "all"))
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v


class ParaphraseConfig(_Section):
    """Co-Reward: answer-preserving rewrites of the train questions, voted on every round."""

    enabled: bool = Field(
        False, description="Make paraphrases (once, with the base model) and vote on them every round."
    )
    template: str | None = Field(
        None, description="Rewrite prompt with `{question}`; null: the bundled `paraphrase` prompt."
    )
    n: int | None = Field(None, ge=1, description="Samples per paraphrase; null: `generation.n`.")
    model: str | None = Field(
        None,
        description="Model folder that writes the paraphrases (an instruction-following model, e.g. the "
        "converted SmolLM2), run on `generation.backend` with its backend-scoped options; null: the policy's "
        "base model. The embedded base model cannot paraphrase.",
    )


class ScoringConfig(_Section):
    """Label-free scoring of rollouts: extraction, voting, rewards, an optional judge."""

    extractor: str | None = Field(
        None, description="Answer extractor name; null uses the task's own extractor."
    )
    extractor_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword options of `scoring.extractor` (e.g. `pattern` for `regex`).",
    )
    rewards: list[RewardTerm] = Field(
        default_factory=lambda: [RewardTerm(name="majority_vote")],
        description="Reward terms, summed with their weights into each rollout's `reward`.",
    )
    judge: JudgeConfig | None = Field(
        None, description="Optional judge whose score is added to the reward (`judge_score`); null for none."
    )
    paraphrase: ParaphraseConfig = Field(
        default_factory=lambda: ParaphraseConfig(),
        description="Co-Reward: vote on paraphrased questions; the `paraphrase_agreement` reward reads it.",
    )
    min_majority_ratio: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Prompts whose top answer has a smaller share than this abstain: no pseudo-label, "
        "no training data from them (SFT, DPO and GRPO alike). Measured on TTRL at 0.3: no gain "
        "overall (docs/research_log.md, 2026-12-05).",
    )
    vote_truncated: bool = Field(
        True,
        description="Let samples cut at `generation.max_tokens` vote (their answer was read from an unfinished "
        "completion). false: a truncated sample counts as giving no answer: it does not vote, gets no reward "
        "and gives no training data. The round table and the report warn when many votes come from them.",
    )


class DataConfig(_Section):
    """Turning scored rollouts into training data (options of `selfimprove.data.build`)."""

    sft: dict[str, Any] = Field(default_factory=dict, description="Keyword options for `build_sft_rows`.")
    dpo: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword options for `build_dpo_pairs` (e.g. `strategy`, `min_margin`, `degree`: the "
        "vote-share gap that SPO's gap-based degree term reads; `d2o_positives`: K further majority samples "
        "per pair for D2O).",
    )
    grpo: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options for `build_grpo_prompts`."
    )


class LoraConfig(_Section):
    """The LoRA adapter trained each round."""

    rank: int = Field(16, ge=1, le=256, description="LoRA rank r.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / rank).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules to adapt: a list of module names, or `all-linear`."
    )


class TrainingConfig(_Section):
    """One training pass per round on the round's data."""

    method: Literal["sft", "dpo", "grpo"] = Field("sft", description="Trainer: `sft`, `dpo` or `grpo`.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    init: Literal["continue", "restart"] = Field(
        "continue",
        description="`continue`: round r trains on top of round r-1's adapter; `restart`: every round "
        "trains a fresh adapter from the base model (ReST-EM).",
    )
    learning_rate: float | None = Field(
        None, gt=0, description="Learning rate; null keeps the trainer default (SFT 2e-5, DPO/GRPO 1e-6)."
    )
    epochs: float = Field(1.0, gt=0, description="Epochs over the round's data.")
    max_steps: int | None = Field(
        None, ge=1, description="Cap on optimizer steps per round (overrides epochs)."
    )
    batch_size: int = Field(8, ge=1, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int | None = Field(None, ge=8, description="Maximum sequence length in training.")
    trl: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other field of the TRL config of `method` (SFTConfig / DPOConfig / GRPOConfig), "
        "e.g. `beta`, `loss_type`, `epsilon_high`, `entropy_coef`, plus the toolkit trainer's own keywords: "
        "for `dpo`, `nll_weight` (DPO + NLL on chosen), `loss_type: d2o` (D2O), and the two SPO (Self-supervised "
        "Preference Optimization) degree terms, `degree_weight` (gap-based, `spo_degree_gap`) and "
        "`degree_paper_weight` (the paper's degraded responses, `spo_degree_paper`); see docs/training.md. "
        "Checked against TRL's field names and the trainer's keywords.",
    )
    accelerate_config: str | None = accelerate_config_field()


class EvaluationConfig(_Section):
    """Evaluation on the held-out split: gold answers are used here and only here."""

    n: int = Field(8, ge=1, description="Samples per evaluation prompt.")
    k: list[int] = Field(
        default_factory=lambda: [1, 8], description="k values for maj@k and pass@k (each at most `n`)."
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature for evaluation.")
    max_tokens: int | None = Field(
        None, ge=1, description="Maximum new tokens; null: `generation.max_tokens`."
    )
    base: bool = Field(True, description="Evaluate the base model as round 0 (the reference of the guard).")

    @model_validator(mode="after")
    def _k(self) -> EvaluationConfig:
        if not self.k:
            raise ValueError("k must list at least one value")
        bad = [k for k in self.k if k < 1 or k > self.n]
        if bad:
            raise ValueError(f"every k must be in 1..n={self.n}; got {bad}")
        return self


class GuardConfig(_Section):
    """Label-free collapse guard, thresholds relative to round 0 (the base model)."""

    enabled: bool = Field(True, description="Check the guard rules after every round.")
    action: Literal["stop", "rollback", "warn"] = Field(
        "stop",
        description="On collapse: `stop` the loop; `rollback` continue from the last healthy adapter "
        "(stops after `max_rollbacks`); `warn` only log.",
    )
    min_entropy_ratio: float | None = Field(
        None,
        ge=0,
        description="Collapse when answer entropy falls below this fraction of round 0's. Null (default): off, "
        "since vote-based recipes lower it on purpose.",
    )
    min_distinct_ratio: float | None = Field(
        None,
        ge=0,
        description="Collapse when mean distinct answers per prompt fall below this fraction of round 0's. "
        "Null (default): off, since vote-based recipes lower it on purpose.",
    )
    max_majority_ratio: float | None = Field(
        0.99,
        ge=0,
        le=1,
        description="Collapse when the mean majority ratio saturates above this (absolute) value while "
        "round 0 was below it.",
    )
    min_length_ratio: float | None = Field(
        0.5,
        ge=0,
        description="Collapse when the mean completion length falls below this fraction of round 0's.",
    )
    max_length_ratio: float | None = Field(
        3.0,
        ge=1,
        description="Collapse when the mean completion length grows above this multiple of round 0's.",
    )
    min_diversity_ratio: float | None = Field(
        0.5,
        ge=0,
        description="Collapse when distinct majority answers across prompts (per prompt) fall below this "
        "fraction of round 0's: the same answer for different questions.",
    )
    max_no_answer_increase: float | None = Field(
        0.15,
        ge=0,
        le=1,
        description="Collapse when the share of evaluation samples without an extractable answer rises more "
        "than this (absolute) above round 0's: the model stops answering.",
    )
    max_rollbacks: int = Field(1, ge=0, description="Rollbacks allowed before the guard stops the loop.")


class LoopConfig(_Section):
    """The rounds."""

    rounds: int = Field(3, ge=1, description="Rounds of generate -> score -> build -> train -> evaluate.")
    seed: int = Field(0, description="Seed of sampling and training (round r uses seed + r).")
    on_empty_data: Literal["skip", "stop"] = Field(
        "skip",
        description="When a round yields no training data: `skip` training (the adapter stays) and go on, "
        "or `stop` the loop.",
    )
    guard: GuardConfig = Field(default_factory=GuardConfig, description="Collapse guard.")


class OutputConfig(_Section):
    """Where the run folder goes."""

    run_dir: str | None = Field(
        None, description="Run folder; null: `runs/<name>`. `--run-dir` on the command line wins."
    )
    tensorboard: bool = Field(True, description="Write TensorBoard events to `<run_dir>/tensorboard/`.")


class RunConfig(_Section):
    """A whole self-training run."""

    name: str = Field("run", description="Run name (default folder `runs/<name>`).")
    description: str = Field("", description="Free text shown in the report.")
    supervised: bool = Field(
        False,
        description="Must be true when a reward uses gold labels (e.g. `gold_verifier`): marks the run as a "
        "supervised baseline, not label-free.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Task and data splits.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Rollout sampling.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Label-free scoring.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training-data building.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Evaluation.")
    loop: LoopConfig = Field(default_factory=LoopConfig, description="Rounds, seed, guard.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Run folder and logging.")

    def fingerprint(self) -> str:
        """A digest of the settings that change results (output location excluded).

        ``loop.rounds`` is left out too: it changes how many rounds run, not what any round
        computes, so ``--resume loop.rounds=N`` extends (or ends) a run without ``--force``.
        Generation options count as the chosen backend receives them (``generation.options``
        merged with its own section; the other backends' sections are not read), and keys added
        to the schema later count only when set away from their default, so a run started before
        either change still resumes without ``--force``.
        """
        d = self.to_dict()
        d.pop("output", None)
        d.pop("description", None)
        d.get("loop", {}).pop("rounds", None)
        generation = d["generation"]
        generation["options"] = self.generation.backend_options()
        for backend in _BACKEND_SECTIONS:
            generation.pop(backend, None)
        for (*sections, key), default in _FINGERPRINT_OMITTED_DEFAULTS.items():
            node = d
            for section in sections:
                node = node.get(section, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict) and node.get(key, default) == default:
                node.pop(key, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# The per-backend option sections of `generation` (one per generation backend).
_BACKEND_SECTIONS = ("vllm", "hf", "openai")
# Keys added to the schema after runs were recorded: at these values they are left out of the
# fingerprint, so a run started before the key existed still resumes without --force.
_FINGERPRINT_OMITTED_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("task", "chat_template"): None,
    ("task", "long_prompts"): "error",
    ("task", "system_prompt"): None,
    ("task", "system_prompt_file"): None,
    ("training", "accelerate_config"): None,
    ("scoring", "vote_truncated"): True,
    # A guard rule only: a resumed run is checked by it from its next round on.
    ("loop", "guard", "max_no_answer_increase"): 0.15,
}


# ---------------------------------------------------------------------------------------------
# Checks against other modules (when importable)
# ---------------------------------------------------------------------------------------------


def _trl_config_class(method: str) -> type | None:
    try:
        if method == "sft":
            from trl import SFTConfig as cls
        elif method == "dpo":
            from trl import DPOConfig as cls
        else:
            from trl import GRPOConfig as cls
    except Exception:  # TRL missing or broken: the trainer will complain when it runs
        return None
    return cls


def _trainer_keywords(method: str) -> set[str]:
    """Keyword options of ``train_<method>`` beyond the TRL config (e.g. DPO's ``nll_weight``)."""
    import importlib

    func = getattr(importlib.import_module(f"selfimprove.train.{method}"), f"train_{method}")
    return {
        n for n, p in inspect.signature(func).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


# The generator class of each backend (module, class), whose constructor takes the options.
_BACKEND_CLASSES = {
    "vllm": ("selfimprove.generate.vllm_backend", "VLLMGenerator"),
    "hf": ("selfimprove.generate.hf_backend", "HFGenerator"),
    "openai": ("selfimprove.generate.openai_backend", "OpenAIGenerator"),
}


def _backend_options(backend: str) -> tuple[list[str], bool]:
    """(keyword options of ``backend``'s constructor, whether it passes other keywords on to its engine)."""
    import importlib

    module, name = _BACKEND_CLASSES[backend]
    cls = getattr(importlib.import_module(module), name)
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, model
    named = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _vllm_engine_arguments() -> set[str] | None:
    """Field names of vLLM's ``EngineArgs`` (what ``LLM(**kwargs)`` accepts); None without vLLM."""
    try:
        from vllm.engine.arg_utils import EngineArgs
    except Exception:  # vLLM missing or broken: the engine start reports it
        return None
    return {f.name for f in dataclasses.fields(EngineArgs)}


def _accepts(backend: str, name: str, engine_args: dict[str, set[str] | None]) -> bool | None:
    """Whether ``backend``'s constructor takes option ``name`` (None: cannot tell)."""
    named, passes_on = _backend_options(backend)
    if name in named:
        return True
    if not passes_on:
        return False
    if "vllm" not in engine_args:  # imported only when an option is not a named one (it is slow)
        engine_args["vllm"] = _vllm_engine_arguments()
    fields = engine_args["vllm"] if backend == "vllm" else None
    return None if fields is None else name in fields


def _check_generation(cfg: RunConfig, where: _Where) -> None:
    """Generation options against the backends' constructors, before anything is written.

    Each per-backend section is checked against its own backend (a typo is caught even while
    another backend runs); ``generation.options`` against the chosen one, naming the backend that
    does take a misplaced option and what chose the backend (a line, or a command-line override).
    """
    g = cfg.generation
    engine_args: dict[str, set[str] | None] = {}
    for backend in _BACKEND_SECTIONS:
        for name in getattr(g, backend):
            if _accepts(backend, name, engine_args) is False:
                named = _backend_options(backend)[0]
                path = ("generation", backend, name)
                cls = _BACKEND_CLASSES[backend][1]
                raise ConfigError(
                    f"{where(path)}generation.{backend}.{name}: not an option of the {backend} backend "
                    f"({cls}){_suggest(name, named)}; allowed: {', '.join(named)}"
                    + (" or an argument of vLLM's EngineArgs" if backend == "vllm" else "")
                )
    chosen = g.backend
    section = getattr(g, chosen)
    for name in g.options:
        path = ("generation", "options", name)
        if name in section:
            raise ConfigError(
                f"{where(path)}generation.options.{name}: also set as generation.{chosen}.{name}; keep one"
            )
        if _accepts(chosen, name, engine_args) is not False:
            continue
        takers = [b for b in _BACKEND_SECTIONS if b != chosen and _accepts(b, name, engine_args)]
        source = where.source(("generation", "backend"), fallback=False) or "the default"
        named = _backend_options(chosen)[0]
        hint = (
            f"it is an option of the {' and '.join(takers)} backend: move it to "
            f"generation.{takers[0]}.{name}, which is read only when that backend runs"
            if takers
            else f"allowed: {', '.join(named)}{_suggest(name, named)}"
        )
        raise ConfigError(
            f"{where(path)}generation.options.{name}: not an option of the {chosen} backend "
            f"(generation.backend {chosen!r}, from {source}); {hint}"
        )
    if chosen == "openai" and not g.backend_options().get("base_url"):
        raise ConfigError(
            f"{where(('generation', 'backend'))}generation.openai.base_url: required with generation.backend "
            "'openai' (the server's URL, e.g. generation.openai.base_url=http://127.0.0.1:8000/v1)"
        )


def _cross_check(cfg: RunConfig, where: _Where) -> None:
    """Checks that need other modules: generation options, reward names, builder options, TRL fields."""
    _check_generation(cfg, where)
    check_accelerate_config(cfg.training.accelerate_config, where)
    from selfimprove.data import build as build_mod
    from selfimprove.score import rewards as rewards_mod

    registry = rewards_mod.REWARDS
    for i, term in enumerate(cfg.scoring.rewards):
        if ":" not in term.name and term.name not in registry:
            path = ("scoring", "rewards", i, "name")
            raise ConfigError(
                f"{where(path)}scoring.rewards[{i}].name: unknown reward {term.name!r}"
                f"{_suggest(term.name, registry)}; registered: {', '.join(sorted(registry))}"
            )
        if rewards_mod.is_supervised_reward(term.name) and not cfg.supervised:
            path = ("scoring", "rewards", i, "name")
            raise ConfigError(
                f"{where(path)}scoring.rewards[{i}].name: {term.name!r} reads gold labels; a run that "
                "uses it must say `supervised: true` (it is a supervised baseline, not label-free)"
            )
    for section, func in (
        ("sft", build_mod.build_sft_rows),
        ("dpo", build_mod.build_dpo_pairs),
        ("grpo", build_mod.build_grpo_prompts),
    ):
        options = getattr(cfg.data, section)
        if options:
            # The first positional argument is the scored rollouts, passed by the runner.
            first = next(iter(inspect.signature(func).parameters), None)
            _check_kwargs(func, options, f"data.{section}", where, skip=[first] if first else [])
    uses_paraphrase = any(t.name == "paraphrase_agreement" for t in cfg.scoring.rewards)
    if uses_paraphrase and not cfg.scoring.paraphrase.enabled:
        raise ConfigError(
            f"{where(('scoring', 'rewards'))}scoring.rewards: 'paraphrase_agreement' needs "
            "scoring.paraphrase.enabled: true (the loop then votes on paraphrased questions)"
        )
    if cfg.training.trl:
        cls = _trl_config_class(cfg.training.method)
        if cls is not None and dataclasses.is_dataclass(cls):
            allowed = {f.name for f in dataclasses.fields(cls)} | _trainer_keywords(cfg.training.method)
            for name in cfg.training.trl:
                if name not in allowed:
                    path = ("training", "trl", name)
                    raise ConfigError(
                        f"{where(path)}training.trl.{name}: not a field of TRL's {cls.__name__} "
                        f"(method {cfg.training.method!r}){_suggest(name, allowed)}"
                    )


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def validate_config(
    data: Mapping[str, Any],
    *,
    file: str | Path | None = None,
    lines: Mapping[KeyPath, int] | None = None,
    overrides: Sequence[str] = (),
    cross_check: bool = True,
) -> RunConfig:
    """Validate a plain dict (plus ``key.sub=value`` overrides) into a :class:`RunConfig`."""
    check = _cross_check if cross_check else None
    return validate(RunConfig, data, file=file, lines=lines, overrides=overrides, check=check)


def load_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), *, cross_check: bool = True
) -> RunConfig:
    """Read (a YAML file) or take (a dict), merge overrides into, and validate a run config.

    Errors name the key (and, for a file, its file:line).
    """
    if isinstance(source, Mapping):
        return validate_config(source, overrides=overrides, cross_check=cross_check)
    return load(source, RunConfig, overrides, check=_cross_check if cross_check else None)


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML text (every key, defaults filled in)."""
    return dump_yaml(cfg)


# Sub-configs documented as keys with their fields below them (a list item, an optional judge).
_INLINE_SECTIONS = (RewardTerm, JudgeConfig)


def iter_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> Iterable[tuple[str, Any, Any, str]]:
    """Yield (key path, type, default, description) for every key of the schema, depth first."""
    from selfimprove.config.docs import iter_fields as _iter_fields

    return _iter_fields(model, prefix, inline=_INLINE_SECTIONS)


def schema_markdown() -> str:
    """A Markdown table of every config key: path, type, default, description."""
    from selfimprove.config.docs import schema_markdown as _schema_markdown

    return _schema_markdown(RunConfig, inline=_INLINE_SECTIONS)


__all__ = [
    "DataConfig",
    "EvaluationConfig",
    "GenerationConfig",
    "GuardConfig",
    "JudgeConfig",
    "LoopConfig",
    "LoraConfig",
    "ModelConfig",
    "OutputConfig",
    "ParaphraseConfig",
    "RewardTerm",
    "RunConfig",
    "ScoringConfig",
    "TaskConfig",
    "TrainingConfig",
    "apply_overrides",
    "dump_config",
    "iter_fields",
    "load_config",
    "parse_override",
    "schema_markdown",
    "validate_config",
]


def update_docs(path: str | Path) -> bool:
    """Rewrite the schema table between the ``schema:start`` / ``schema:end`` markers of a Markdown file."""
    from selfimprove.config.docs import update_docs as _update_docs

    return _update_docs(path, RunConfig, inline=_INLINE_SECTIONS)


if __name__ == "__main__":
    import sys

    for target in sys.argv[1:] or ["docs/loop.md"]:
        print(f"{target}: {'updated' if update_docs(target) else 'up to date'}")
