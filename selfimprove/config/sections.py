"""Keys that several jobs' config sections share, declared once: the field, its check, its resolution.

``TaskSource`` is the part of a ``task`` section that says where prompts come from (a bundled task
or a user JSONL file) and how the evaluation split is drawn; ``selfimprove.tasks.task_from_section``
reads it. Self-training (``loop.config.TaskConfig``) and distillation
(``distill.config.DistillTaskConfig``) add their own keys to it.

``training.accelerate_config`` names an accelerate config YAML under which the train stage runs
(``accelerate launch``, see :mod:`selfimprove.train.launch`); null trains in the job's own process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from selfimprove.config.loader import KeySource, Section
from selfimprove.errors import ConfigError

# The package's own copy of the repository's configs/ folder (selfimprove/configs links to it).
PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def task_name_field(default: str) -> Any:
    """The ``task.name`` field with a job's default bundled task."""
    return Field(
        default,
        description="Bundled task name (`arithmetic`, `counting`, `sorting`, `string_ops`). Set to null "
        "and give `file` to use your own prompts.",
    )


class TaskSource(Section):
    """Where prompts come from: a bundled synthetic task, or your own JSONL file.

    A subclass sets ``name`` (``task_name_field``) and names its split sizes in ``SIZE_KEYS``: a
    bundled task needs all of them set.
    """

    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("eval_size",)

    name: str | None = task_name_field("arithmetic")
    file: str | None = Field(
        None,
        description="User JSONL task: one object per line with a prompt (`prompt_field`) and optionally a "
        "gold answer (`gold_field`, split off at load time and used only for evaluation). Rows go to the "
        "train or eval split by a hash of the prompt, or by a `split` field.",
    )
    level: int = Field(1, ge=1, description="Difficulty level of a bundled task.")
    instruction: bool | None = Field(
        None,
        description="End every bundled prompt with the answer-format instruction \"End with 'The answer is "
        "X.'\". null: no for a `builtin:` model (distillation: the teacher; the embedded base models are "
        "trained without it), yes for a model folder (real models need it).",
    )
    eval_size: int | None = Field(
        64, ge=1, description="Prompts in the evaluation split (null: all eval rows of a user file)."
    )
    seed: int = Field(0, description="Seed of the split generator / shuffle.")
    prompt_field: str = Field("prompt", description="Field holding the prompt in a user JSONL file.")
    gold_field: str = Field("answer", description="Field holding the gold answer in a user JSONL file.")
    id_field: str = Field("id", description="Field holding the prompt id in a user JSONL file.")
    eval_fraction: float = Field(
        0.2, ge=0, le=1, description="Share of a user file's rows with gold that go to the eval split."
    )
    extractor: str | None = Field(
        None,
        description="Answer extractor of a user task (`answer_is`, `boxed`, `last_number`, `choice`, "
        "`regex`, `json_field`, `math`, or `module:function`); bundled tasks bring their own "
        "(self-training: `scoring.extractor` overrides both).",
    )
    extractor_options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options of the user task's extractor (e.g. `pattern`)."
    )

    @model_validator(mode="after")
    def _task_source(self) -> TaskSource:
        if self.name is None and self.file is None:
            raise ValueError("give either task.name (a bundled task) or task.file (your JSONL)")
        if self.name is not None and self.file is not None:
            raise ValueError("task.name and task.file are exclusive: set task.name: null for a user task")
        if self.file is None and any(getattr(self, k) is None for k in self.SIZE_KEYS):
            raise ValueError(f"a bundled task needs {' and '.join(self.SIZE_KEYS)}")
        return self


def accelerate_config_field() -> Any:
    """The ``training.accelerate_config`` field of a job's training section (default null: in-process)."""
    return Field(
        None,
        description="An accelerate config YAML (e.g. `configs/accelerate/cpu_2proc.yaml`): the train stage "
        "then runs under `accelerate launch` with it, on as many processes as it names, and the job waits "
        "for the adapter. A relative path is read from the working folder, else from the configs shipped "
        "in the package. Batch sizes are per process. null: train in the job's own process.",
    )


def resolve_accelerate_config(value: str | Path) -> Path:
    """The accelerate config file ``value`` names: relative to the working folder, else a shipped config.

    ``configs/accelerate/cpu_2proc.yaml`` is found from the repository root and, in an installed
    package, among the configs shipped with it. Raises FileNotFoundError naming what was tried.
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path.resolve()
    tried = [str(path)]
    if not path.is_absolute():
        parts = path.parts[1:] if path.parts and path.parts[0] == "configs" else path.parts
        shipped = PACKAGE_CONFIGS.joinpath(*parts)
        if shipped.is_file():
            return shipped.resolve()
        tried.append(str(shipped))
    raise FileNotFoundError(" nor ".join(tried))


def check_accelerate_config(
    value: str | None, where: KeySource, path: Sequence[str] = ("training", "accelerate_config")
) -> None:
    """Refuse an accelerate config that is not a file (the error names the key and its file:line)."""
    if value is None:
        return
    key = ".".join(path)
    if not str(value).strip():
        raise ConfigError(f"{where(path)}{key}: empty path; give an accelerate config YAML or null")
    try:
        resolve_accelerate_config(value)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{where(path)}{key}: accelerate config not found: {exc} (shipped ones: configs/accelerate/)"
        ) from None


__all__ = [
    "PACKAGE_CONFIGS",
    "TaskSource",
    "accelerate_config_field",
    "check_accelerate_config",
    "resolve_accelerate_config",
    "task_name_field",
]
