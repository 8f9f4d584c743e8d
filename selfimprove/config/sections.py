"""Keys that several jobs' config sections share, declared once: the field, its check, its resolution.

``training.accelerate_config`` names an accelerate config YAML under which the train stage runs
(``accelerate launch``, see :mod:`selfimprove.train.launch`); null trains in the job's own process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from selfimprove.config.loader import KeySource
from selfimprove.errors import ConfigError

# The package's own copy of the repository's configs/ folder (selfimprove/configs links to it).
PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
    "accelerate_config_field",
    "check_accelerate_config",
    "resolve_accelerate_config",
]
