"""Teacher -> student distillation on unlabeled inputs (``selfimprove distill``).

A teacher labels the task's unlabeled inputs (k samples, majority vote), the student's need of
each label is measured teacher-forced, selection strategies (all, random, confidence, need, LLKD)
choose what the student trains on, and a LoRA adapter of the student is trained on each selection
and evaluated on the held-out split. Names are imported on first use (no torch at import).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "distill": "selfimprove.distill.runner",
    "DistillResult": "selfimprove.distill.runner",
    "DistillConfig": "selfimprove.distill.config",
    "load_config": "selfimprove.distill.config",
    "config_from_dict": "selfimprove.distill.config",
    "StudentScorer": "selfimprove.distill.scorer",
    "Candidate": "selfimprove.distill.select",
    "SelectionSettings": "selfimprove.distill.select",
    "select": "selfimprove.distill.select",
    "label_groups": "selfimprove.distill.label",
    "write_report": "selfimprove.distill.report",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'selfimprove.distill' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
