"""The prompt-optimization task file: MetaGPT's SPO format, plus optional run settings.

A MetaGPT task file is accepted as is::

    prompt: Answer the question.          # the prompt to improve
    requirements: Answer in one sentence.  # what a good answer does (the judge reads these)
    count: null                            # optional word limit for the optimized prompt
    qa:                                    # (or faq:) unlabeled example questions
      - question: Why is the sky blue?
        answer:                            # optional; never shown to the optimizer or the judge

Everything else is optional and has a default: the three roles (``optimizer``, ``executor``,
``evaluator``), each with its own backend, model, sampling and seed; the question sample; the
decision rule; a budget; a held-out check. Unknown keys are errors with the file, line and a
"did you mean"; overrides ``key.sub=value`` are validated the same way.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from selfimprove.config.loader import KeySource, Section, check_kwargs, dump_yaml, load_named, suggest
from selfimprove.errors import ConfigError

BACKENDS = ("vllm", "hf", "openai")
# Strings MetaGPT's own task files use for "no value" (YAML reads `None` as the string 'None').
_NONE_STRINGS = {"", "none", "null", "~"}
# Placeholders each template may use (and the ones it must use).
OPTIMIZER_FIELDS = ("requirements", "prompt", "answers", "count", "references")
OPTIMIZER_REQUIRED = ("requirements", "prompt", "answers")
JUDGE_FIELDS = ("requirements", "question", "response_a", "response_b")
JUDGE_REQUIRED = ("question", "response_a", "response_b")
DEFAULT_CHECKER = "selfimprove.prompt_opt.checks:check_answer"


def _stripped(v: str, what: str) -> str:
    v = v.strip()
    if not v:
        raise ValueError(f"the {what} is empty")
    return v


def _none_if_placeholder(v: Any) -> Any:
    if isinstance(v, str) and v.strip().lower() in _NONE_STRINGS:
        return None
    return v


class QAItem(Section):
    """One example question; its answer (optional) is a reference, used only where the config says."""

    question: str = Field(description="The question (the executor gets the prompt, then the question).")
    answer: str | None = Field(
        None,
        description="Optional reference answer. Never shown to the optimizer or the judge unless "
        "`reference_guided: true` (then to the optimizer only); used to score the held-out check when "
        "no checker is given.",
    )

    @field_validator("question")
    @classmethod
    def _question(cls, v: str) -> str:
        return _stripped(v, "question")

    @field_validator("answer", mode="before")
    @classmethod
    def _answer(cls, v: Any) -> Any:
        v = _none_if_placeholder(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        return v.strip() if isinstance(v, str) else v


class PriceConfig(Section):
    """Prices per million tokens, to report money next to token counts."""

    input: float = Field(0.0, ge=0, description="Price per million input (prompt) tokens.")
    output: float = Field(0.0, ge=0, description="Price per million output (completion) tokens.")


class RoleConfig(Section):
    """A role's generator and sampling. Unset backend/model fall back to the top-level ones."""

    backend: Literal["vllm", "hf", "openai"] | None = Field(
        None, description="Generation backend of this role; null: the top-level `backend`."
    )
    model: str | None = Field(
        None,
        description="Model folder (vllm, hf) or served model name (openai); null: the top-level `model`.",
    )
    options: dict[str, Any] | None = Field(
        None,
        description="Keyword options of the backend's constructor (e.g. `base_url`, `api_key_env` for "
        "openai; `enforce_eager`, `max_model_len` for vllm; `batch_size` for hf); null: the top-level "
        "`options`. Roles with the same backend, model and options share one engine.",
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(512, ge=1, description="Maximum new tokens per reply.")
    seed: int | None = Field(None, description="Seed of this role's calls; null: the top-level `seed`.")
    max_attempts: int = Field(
        3, ge=1, description="Tries per call: a failed call (backend error, unusable reply) is retried."
    )
    price: PriceConfig | None = Field(
        None, description="Prices per million tokens of this role's model (null: no money reported)."
    )


class OptimizerConfig(RoleConfig):
    """The optimizer proposes a new prompt from the requirements, the incumbent and its answers."""

    temperature: float = Field(0.7, ge=0, description="Sampling temperature.")
    max_tokens: int = Field(512, ge=1, description="Maximum new tokens per reply.")
    template: str | None = Field(
        None,
        description="Prompt template (a name in `prompts/` or a file path) with `{requirements}`, "
        "`{prompt}`, `{answers}` and optionally `{count}`, `{references}`; null: `prompt_opt_optimize` "
        "(reply `tagged`) or `prompt_opt_optimize_whole` (reply `whole`).",
    )
    reply: Literal["tagged", "whole"] = Field(
        "tagged",
        description="`tagged`: the new prompt is the reply's last `<prompt>...</prompt>` section (with "
        "`<analyse>` and `<modification>` kept in the record); a reply without one is a failed proposal, "
        "retried. `whole`: the whole reply is the new prompt (for small models that ignore formats).",
    )


class ExecutorConfig(RoleConfig):
    """The executor answers the sample questions with a prompt."""

    prompt_as: Literal["prefix", "system"] = Field(
        "prefix",
        description="`prefix`: one user message `prompt + blank line + question` (MetaGPT's way); "
        "`system`: the prompt as the system message and the question as the user message.",
    )


class EvaluatorConfig(RoleConfig):
    """The evaluator judges the incumbent's and the challenger's answers pairwise."""

    mode: Literal["text", "logprob"] = Field(
        "text",
        description="`text`: the judge writes an analysis and `<choose>A|B|C</choose>` (C: equally good); "
        "`logprob`: the probabilities of the letters A/B/C as the first token are compared (for small "
        "local models; needs a backend that returns log-probabilities).",
    )
    template: str | None = Field(
        None,
        description="Judge template with `{question}`, `{response_a}`, `{response_b}` and optionally "
        "`{requirements}`; null: `prompt_opt_judge` (text) or `judge_pairwise` (logprob).",
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Maximum new tokens per reply; null: 512 in text mode, 1 in logprob mode."
    )
    repeats: int = Field(
        1,
        ge=1,
        description="Calls per comparison and order, each seeded differently (at temperature 0, and in "
        "logprob mode, repeats give the same verdict: raise the temperature for several).",
    )
    orders: Literal["both", "one_random"] = Field(
        "both",
        description="`both`: every comparison in both orders, counted only when both answered (position "
        "bias cancels). `one_random`: one order drawn at random per call (the published SPO loop's "
        "scheme; kept for comparison, biased judges decide by position).",
    )
    unit: Literal["question", "set"] = Field(
        "question",
        description="`question`: each question's two answers are compared; `set`: all questions and both "
        "answer sets in one comparison.",
    )
    top_logprobs: int = Field(20, ge=1, description="Top log-probabilities read in logprob mode.")


class SampleConfig(Section):
    """The questions every round uses, drawn once per run."""

    size: int = Field(3, ge=1, description="Questions drawn from `qa` (all when there are fewer).")
    seed: int | None = Field(None, description="Seed of the draw; null: the top-level `seed`.")


class DecisionConfig(Section):
    """When the challenger replaces the incumbent."""

    margin: float = Field(
        0.05,
        ge=0,
        lt=0.5,
        description="Adopt when the mean preference for the challenger is above 0.5 + margin; reject when "
        "below 0.5 - margin; in between: no decision (the incumbent stays).",
    )
    min_judged: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the comparisons that must have a valid judgement (both orders answered); "
        "fewer: no decision (judge failures are never a win or a loss).",
    )


class BudgetConfig(Section):
    """A limit on the run's spending; the run stops cleanly before a step once it is reached."""

    max_calls: int | None = Field(None, ge=1, description="Maximum model calls (all roles); null: none.")
    max_tokens: int | None = Field(
        None, ge=1, description="Maximum input + output tokens (all roles); null: none."
    )


class CheckerConfig(Section):
    """A pass/fail check of one answer, for the held-out evaluation only."""

    function: str = Field(
        DEFAULT_CHECKER,
        description="`module:function` called as `function(answer, question=..., **options)` returning "
        "true/false (None: cannot tell). The bundled `check_answer` checks format, length and required "
        "or forbidden content.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the function.")


class HeldoutConfig(Section):
    """Beyond SPO: the initial and the best prompt on questions the optimizer never saw."""

    enabled: bool = Field(False, description="Run the held-out check after the last round.")
    from_qa: bool = Field(True, description="Use the `qa` questions that were not drawn into the sample.")
    questions: list[QAItem] = Field(
        default_factory=list, description="More held-out questions (with optional reference answers)."
    )
    checker: CheckerConfig | None = Field(
        None,
        description="How an answer passes; null: by its reference answer (it occurs in the answer as "
        "whole words, case and punctuation ignored); questions with neither are left out.",
    )


class PromptOptConfig(Section):
    """A prompt-optimization task (MetaGPT's SPO format) and how to run it."""

    name: str | None = Field(None, description="Task name (default: the file name without .yaml).")
    description: str = Field("", description="Free text shown in the report.")
    prompt: str = Field(description="The prompt to optimize.")
    requirements: str = Field(description="What a good answer does; the judge compares answers against them.")
    count: int | None = Field(
        None, ge=1, description="Word limit for the optimized prompt (asked of the optimizer, recorded)."
    )
    qa: list[QAItem] | None = Field(None, description="Example questions (`question`, optional `answer`).")
    faq: list[QAItem] | None = Field(None, description="Another name of `qa` (older MetaGPT files).")
    model: str | None = Field(None, description="Model of every role that does not name its own.")
    backend: Literal["vllm", "hf", "openai"] = Field(
        "vllm", description="Backend of every role that does not name its own: `vllm`, `hf` or `openai`."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend constructor options of every role that gives none."
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="Optimizer role.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Executor role.")
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig, description="Evaluator (judge) role.")
    rounds: int = Field(
        10, ge=0, description="Optimization rounds after round 1 (which runs the initial prompt)."
    )
    seed: int = Field(0, description="Seed of the question sample and of every role without its own.")
    sample: SampleConfig = Field(default_factory=SampleConfig, description="The question sample.")
    decision: DecisionConfig = Field(default_factory=DecisionConfig, description="The decision rule.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Spending limit.")
    reference_guided: bool = Field(
        False,
        description="Show the sample questions' reference answers to the optimizer (never to the judge). "
        "Off: the run is reference-free.",
    )
    heldout: HeldoutConfig = Field(default_factory=HeldoutConfig, description="Held-out check.")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _stripped(v, "prompt to optimize")

    @field_validator("requirements", mode="before")
    @classmethod
    def _requirements(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in _NONE_STRINGS):
            raise ValueError(
                f"the task needs written requirements (the judge compares answers against them); got {v!r}"
            )
        return v.strip() if isinstance(v, str) else v

    @field_validator("count", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        return _none_if_placeholder(v)

    @model_validator(mode="after")
    def _questions(self) -> PromptOptConfig:
        if self.qa is not None and self.faq is not None:
            raise ValueError("give the questions as qa or as faq, not both")
        if not self.qa_items():
            raise ValueError("the task has no questions: give qa (a list of question/answer items)")
        return self

    def qa_items(self) -> list[QAItem]:
        """The example questions (``qa`` or ``faq``)."""
        return list(self.qa if self.qa is not None else self.faq or [])

    def fingerprint(self) -> str:
        """A digest of the settings that change results.

        Left out: ``rounds`` and ``budget`` (how far the run goes, not what a round computes, so
        ``--resume rounds=N`` extends a run), prices, ``name`` and ``description``.
        """
        d = self.to_dict()
        for key in ("rounds", "budget", "name", "description"):
            d.pop(key, None)
        for role in ("optimizer", "executor", "evaluator"):
            d[role].pop("price", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


ROLES = ("optimizer", "executor", "evaluator")


@dataclass(frozen=True)
class RoleSpec:
    """A role's resolved generator settings (backend, model, options) and seed."""

    backend: str
    model: str
    options: dict[str, Any]
    seed: int

    def engine_key(self) -> str:
        """Roles with equal keys share one generator."""
        return json.dumps([self.backend, self.model, self.options], sort_keys=True, default=str)


def role_spec(cfg: PromptOptConfig, role: str) -> RoleSpec:
    """The resolved backend, model, options and seed of ``role``."""
    rc: RoleConfig = getattr(cfg, role)
    model = rc.model or cfg.model
    if not model:
        raise ConfigError(
            f"{role}.model: no model for the {role}; set `model` (every role) or `{role}.model`"
        )
    return RoleSpec(
        backend=rc.backend or cfg.backend,
        model=model,
        options=dict(rc.options if rc.options is not None else cfg.options),
        seed=rc.seed if rc.seed is not None else cfg.seed,
    )


def template_text(name_or_path: str) -> str:
    """Text of a template: inline text (anything with a ``{`` placeholder), a name in ``prompts/`` or a path."""
    from selfimprove.score.judges import load_prompt

    return name_or_path if "{" in name_or_path else load_prompt(name_or_path)


def optimizer_template_name(cfg: PromptOptConfig) -> str:
    """The optimizer template in use (configured or the default for the reply format)."""
    if cfg.optimizer.template:
        return cfg.optimizer.template
    return "prompt_opt_optimize" if cfg.optimizer.reply == "tagged" else "prompt_opt_optimize_whole"


def judge_template_name(cfg: PromptOptConfig) -> str:
    """The judge template in use (configured or the default for the mode)."""
    if cfg.evaluator.template:
        return cfg.evaluator.template
    return "prompt_opt_judge" if cfg.evaluator.mode == "text" else "judge_pairwise"


def placeholders(template: str) -> list[str]:
    """The ``{name}`` fields of a str.format template (raises ValueError when malformed)."""
    return [f for _lit, f, _spec, _conv in string.Formatter().parse(template) if f is not None]


def _check_template(key: str, name: str, allowed: Sequence[str], required: Sequence[str], where: KeySource):
    path = tuple(key.split("."))
    try:
        text = template_text(name)
    except ConfigError as exc:
        raise ConfigError(f"{where(path)}{key}: {exc}") from None
    source = name if "{" not in name else "inline template"
    try:
        fields = placeholders(text)
    except ValueError as exc:
        raise ConfigError(
            f"{where(path)}{key}: {source}: malformed template ({exc}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    for f in fields:
        if f not in allowed:
            raise ConfigError(
                f"{where(path)}{key}: {source}: unknown placeholder {{{f}}}{suggest(f, allowed)}; "
                f"available: {', '.join('{' + a + '}' for a in allowed)}"
            )
    missing = [r for r in required if r not in fields]
    if missing:
        raise ConfigError(
            f"{where(path)}{key}: {source}: the template must use {', '.join('{' + m + '}' for m in missing)}"
        )


def _backend_class(backend: str) -> Any:
    if backend == "hf":
        from selfimprove.generate.hf_backend import HFGenerator

        return HFGenerator
    if backend == "openai":
        from selfimprove.generate.openai_backend import OpenAIGenerator

        return OpenAIGenerator
    from selfimprove.generate.vllm_backend import VLLMGenerator

    return VLLMGenerator


def resolve_callable(spec: str, key: str, where: KeySource | None = None) -> Any:
    """Import ``module:function``; a ConfigError naming ``key`` (and its file:line) when it cannot."""
    from selfimprove.score.extract import load_callable

    try:
        return load_callable(spec)
    except ConfigError as exc:
        prefix = where(tuple(key.split("."))) if where is not None else ""
        raise ConfigError(f"{prefix}{key}: {exc}") from None


def check_config(cfg: PromptOptConfig, where: KeySource) -> None:
    """Checks beyond the schema: models, backend options, templates, the checker (file:line errors)."""
    for role in ROLES:
        rc: RoleConfig = getattr(cfg, role)
        if not (rc.model or cfg.model):
            path = (role, "model") if (role, "model") in where.lines else ("model",)
            raise ConfigError(
                f"{where(path)}{role}.model: no model for the {role}; set `model` (every role) or "
                f"`{role}.model` (e.g. on the command line: model=/path/to/model)"
            )
        spec = role_spec(cfg, role)
        key = f"{role}.options" if rc.options is not None else "options"
        check_kwargs(_backend_class(spec.backend).__init__, spec.options, key, where, skip=["self", "model"])
    if cfg.evaluator.mode == "logprob" and cfg.evaluator.max_tokens not in (None, 1):
        path = ("evaluator", "max_tokens")
        raise ConfigError(
            f"{where(path)}evaluator.max_tokens: logprob mode reads the first token only; leave it null"
        )
    _check_template(
        "optimizer.template", optimizer_template_name(cfg), OPTIMIZER_FIELDS, OPTIMIZER_REQUIRED, where
    )
    _check_template("evaluator.template", judge_template_name(cfg), JUDGE_FIELDS, JUDGE_REQUIRED, where)
    if cfg.heldout.checker is not None:
        resolve_callable(cfg.heldout.checker.function, "heldout.checker.function", where)
        if cfg.heldout.checker.function == DEFAULT_CHECKER:
            from selfimprove.prompt_opt.checks import check_options

            try:
                check_options(cfg.heldout.checker.options)
            except ConfigError as exc:
                raise ConfigError(
                    f"{where(('heldout', 'checker', 'options'))}heldout.checker.options: {exc}"
                ) from None


def load_task(path: str | Path, overrides: Sequence[str] = ()) -> PromptOptConfig:
    """Read a task file (MetaGPT format plus optional settings) with overrides; errors name file:line."""
    return load_named(Path(path), PromptOptConfig, overrides, check=check_config)


def task_from_dict(
    data: Mapping[str, Any], overrides: Sequence[str] = (), *, name: str = "task"
) -> PromptOptConfig:
    """Validate a task given as a dict (e.g. from Python) the same way as a file."""
    return load_named(data, PromptOptConfig, overrides, check=check_config, default_name=name)


def dump_task(cfg: PromptOptConfig) -> str:
    """The resolved task and settings as YAML text."""
    return dump_yaml(cfg)


# Sub-configs documented as keys with their fields below them (list items, optional settings).
DOC_INLINE = (QAItem, PriceConfig, CheckerConfig)


def update_docs(path: str | Path) -> bool:
    """Rewrite the schema table of docs/prompt_opt.md (between the schema markers); True if changed."""
    from selfimprove.config.docs import update_docs as _update_docs

    return _update_docs(path, PromptOptConfig, inline=DOC_INLINE)


__all__ = [
    "BACKENDS",
    "ROLES",
    "BudgetConfig",
    "CheckerConfig",
    "DecisionConfig",
    "EvaluatorConfig",
    "ExecutorConfig",
    "HeldoutConfig",
    "OptimizerConfig",
    "PriceConfig",
    "PromptOptConfig",
    "QAItem",
    "RoleConfig",
    "RoleSpec",
    "SampleConfig",
    "check_config",
    "dump_task",
    "judge_template_name",
    "load_task",
    "optimizer_template_name",
    "placeholders",
    "resolve_callable",
    "role_spec",
    "task_from_dict",
    "update_docs",
]


if __name__ == "__main__":
    import sys

    for target in sys.argv[1:] or ["docs/prompt_opt.md"]:
        print(f"{target}: {'updated' if update_docs(target) else 'up to date'}")
