"""Evaluation against gold answers: ``evaluate()`` for a model on a task, and the metrics it reports."""

from selfimprove.eval.evaluate import eval_metrics, evaluate, group_by_prompt
from selfimprove.eval.metrics import (
    evaluate_answers,
    label_accuracy,
    maj_at_k,
    majority_answer,
    pass_at_1,
    pass_at_k,
    pass_at_k_estimate,
    reward_accuracy,
)

__all__ = [
    "eval_metrics",
    "evaluate",
    "evaluate_answers",
    "group_by_prompt",
    "label_accuracy",
    "maj_at_k",
    "majority_answer",
    "pass_at_1",
    "pass_at_k",
    "pass_at_k_estimate",
    "reward_accuracy",
]
