"""Checks for local Hugging Face model folders (no hub: every model is a folder on disk)."""

from __future__ import annotations

from pathlib import Path

from selfimprove.errors import InputError


def resolve_model_dir(path: str | Path) -> Path:
    """Return ``path`` resolved, after checking it is an HF model folder with safetensors weights."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"model folder not found: {p} (models are local folders; no hub downloads are made)")
    if not p.is_dir():
        raise InputError(f"model path is not a folder: {p}")
    if not (p / "config.json").is_file():
        raise InputError(f"{p} is not a Hugging Face model folder: config.json is missing")
    weights = list(p.glob("*.safetensors"))
    if not weights:
        extra = ""
        if list(p.glob("*.bin")) or list(p.glob("*.pt")):
            extra = " (found pickle weights *.bin/*.pt; only safetensors are loaded, for safety)"
        elif list(p.glob("*.gguf")):
            extra = " (found a GGUF file; convert it first, e.g. `selfimprove convert-smollm`)"
        raise InputError(f"{p} has no *.safetensors weights{extra}")
    return p.resolve()


BUILTIN_PREFIX = "builtin:"


def resolve_model(path: str, progress: bool = True) -> str:
    """A model folder from a config's ``model.path``: a local folder, or ``builtin:<task>``.

    ``builtin:<task>`` is the bundled task's embedded base model, shipped with the package (built
    on this machine only for a task that ships none). A folder holding a base model whose build
    never became competent is refused (``selfimprove.models.base_model.check_competent``).
    """
    from selfimprove.models import base_model

    if path.startswith(BUILTIN_PREFIX):
        return str(base_model.builtin_model(path[len(BUILTIN_PREFIX) :], progress=progress))
    folder = resolve_model_dir(path)
    base_model.check_competent(folder)
    return str(folder)
