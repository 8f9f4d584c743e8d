"""Adapter lifecycle: save per round with metadata, reload to continue training, merge and export.

An adapter is a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) plus
``adapter_meta.json`` (base model, round, method, config, steps, created). Generators load it by
path (``Generator.generate(..., adapter=path)``): the vLLM backend hot-swaps it without a restart.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from selfimprove.errors import InputError
from selfimprove.runs.io import atomic_dir, write_json_atomic

META_FILE = "adapter_meta.json"


def save_adapter(
    model,
    out_dir: str | Path,
    *,
    base_model: str,
    method: str,
    steps: int,
    config: dict[str, Any] | None = None,
    round: int | None = None,
    tokenizer=None,
    is_main_process: bool = True,
) -> Path:
    """Save a PEFT model's adapter (safetensors) and ``adapter_meta.json`` to ``out_dir``; return the path."""
    out = Path(out_dir)
    if not is_main_process:
        return out
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    meta = {
        "base_model": base_model,
        "round": round,
        "method": method,
        "steps": steps,
        "config": config or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(out / META_FILE, meta, sort_keys=True)
    return out


def read_adapter_meta(adapter: str | Path) -> dict[str, Any]:
    """The ``adapter_meta.json`` of an adapter folder ({} when the folder has none)."""
    path = Path(adapter) / META_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from exc


def set_adapter_round(adapter: str | Path, round: int) -> None:
    """Record the loop round in an adapter's metadata (the loop names rounds, trainers do not)."""
    meta = read_adapter_meta(adapter)
    meta["round"] = round
    write_json_atomic(Path(adapter) / META_FILE, meta, sort_keys=True)


def check_adapter_dir(adapter: str | Path) -> Path:
    """Return the adapter folder after checking it holds a PEFT config and safetensors weights."""
    p = Path(adapter).expanduser()
    if not (p / "adapter_config.json").is_file():
        raise InputError(f"adapter folder {p}: adapter_config.json is missing (not a PEFT adapter)")
    if not (p / "adapter_model.safetensors").is_file():
        extra = (
            " (found adapter_model.bin: only safetensors are loaded)"
            if (p / "adapter_model.bin").exists()
            else ""
        )
        raise InputError(f"adapter folder {p}: adapter_model.safetensors is missing{extra}")
    return p.resolve()


def load_adapter_for_training(model, adapter: str | Path):
    """Wrap a loaded base model with a saved adapter whose weights stay trainable (continue a round)."""
    from peft import PeftModel

    path = check_adapter_dir(adapter)
    return PeftModel.from_pretrained(model, str(path), is_trainable=True)


def merged_model(base_dir: str | Path, adapter: str | Path, trust_remote_code: bool = False):
    """``base + adapter`` as one plain HF model, merged in float32 (small LoRA deltas survive)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = check_adapter_dir(adapter)
    model = AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except Exception as exc:
        raise InputError(f"adapter {adapter_dir} does not fit the base model {base_dir}: {exc}") from exc


def merge_adapter(base: str | Path, adapter: str | Path, out_dir: str | Path) -> Path:
    """Merge ``adapter`` into ``base`` and export a standalone HF safetensors folder (with tokenizer)."""
    from transformers import AutoTokenizer

    from selfimprove.models.loading import resolve_model_dir

    base_dir = resolve_model_dir(base)
    adapter_dir = check_adapter_dir(adapter)
    out = Path(out_dir)
    merged = merged_model(base_dir, adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written into a sibling temp folder, then swapped in: a crash never leaves a half-written model.
    with atomic_dir(out) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        meta = {"merged_from": {"base_model": str(base_dir), "adapter": str(adapter_dir)}}
        meta["adapter_meta"] = read_adapter_meta(adapter_dir)
        write_json_atomic(tmp / "merge_meta.json", meta, sort_keys=True)
    return out
