"""Trainers on LoRA adapters (SFT, DPO family, GRPO), the losses TRL lacks, and the adapter lifecycle.

Names are imported on first use, so ``import selfimprove.train`` does not load TRL.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train_sft": "selfimprove.train.sft",
    "train_dpo": "selfimprove.train.dpo",
    "train_grpo": "selfimprove.train.grpo",
    "PreferenceTrainer": "selfimprove.train.dpo",
    "GeneratorRollout": "selfimprove.train.grpo",
    "LoraSettings": "selfimprove.train.common",
    "TrainResult": "selfimprove.train.common",
    "save_adapter": "selfimprove.train.adapters",
    "read_adapter_meta": "selfimprove.train.adapters",
    "set_adapter_round": "selfimprove.train.adapters",
    "merge_adapter": "selfimprove.train.adapters",
    "load_adapter_for_training": "selfimprove.train.adapters",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'selfimprove.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
