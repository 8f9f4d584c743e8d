"""Trainers on LoRA adapters (SFT, DPO family, GRPO, GKD distillation), the losses TRL lacks, and the adapter lifecycle.

Names are imported on first use, so ``import selfimprove.train`` does not load TRL.
"""

from __future__ import annotations

from selfimprove.lazy import lazy_exports

_EXPORTS = {
    "train_sft": "selfimprove.train.sft",
    "train_gkd": "selfimprove.train.gkd",
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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
