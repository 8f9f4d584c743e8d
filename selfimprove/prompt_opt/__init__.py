"""Prompt optimization without references (Self-Supervised Prompt Optimization, SPO).

``optimize_prompt(task, workspace)`` improves a prompt from a few unlabeled questions and written
requirements: an optimizer model proposes, an executor answers, a pairwise judge compares the
answers in both orders, and a challenger replaces the incumbent only when the judge prefers it.
"""

from selfimprove.prompt_opt.config import PromptOptConfig, load_task, task_from_dict
from selfimprove.prompt_opt.optimizer import PromptOptResult, optimize_prompt
from selfimprove.prompt_opt.report import write_report

__all__ = [
    "PromptOptConfig",
    "PromptOptResult",
    "load_task",
    "optimize_prompt",
    "task_from_dict",
    "write_report",
]
