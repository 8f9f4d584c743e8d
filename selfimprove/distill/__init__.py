"""Teacher -> student distillation on unlabeled inputs (``selfimprove distill``).

A teacher labels the task's unlabeled inputs (k samples, majority vote), the student's need of
each label is measured teacher-forced, selection strategies (all, random, confidence, need, LLKD)
choose what the student trains on, and a LoRA adapter of the student is trained on each selection
and evaluated on the held-out split. Names are imported on first use (no torch at import).
"""

from __future__ import annotations

from selfimprove.lazy import lazy_exports

_EXPORTS = {
    "distill": "selfimprove.distill.runner",
    "DistillResult": "selfimprove.distill.runner",
    "DistillConfig": "selfimprove.distill.config",
    "load_config": "selfimprove.distill.config",
    "config_from_dict": "selfimprove.distill.config",
    "StudentScorer": "selfimprove.distill.scorer",
    "Candidate": "selfimprove.distill.selection",
    "SelectionSettings": "selfimprove.distill.selection",
    "select": "selfimprove.distill.selection",
    "label_groups": "selfimprove.distill.label",
    "write_report": "selfimprove.distill.report",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
