"""selfimprove: label-free self-improvement for language models.

What a script needs, importable from here (each name is loaded on first use, so ``import
selfimprove`` stays light)::

    from selfimprove import Sampling, build_generator, evaluate, get_task, load_config, run

    config = load_config("configs/demo.yaml")  # or a dict with the same keys
    summary = run(config, "runs/demo")  # the self-training rounds; summary["history"] per round
    generator = build_generator("hf", "path/to/model")  # any local HF model folder
    metrics = evaluate(generator, get_task("string_ops"), Sampling(n=8), adapter=summary["final_adapter"])

``run`` also takes a Task object (``task=``) and reward functions written in Python
(``rewards=``); scripts/ holds runnable examples.
"""

from __future__ import annotations

from selfimprove.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # configs and runs
    "load_config": "selfimprove.loop.config",
    "RunConfig": "selfimprove.loop.config",
    "run": "selfimprove.loop.runner",
    "round_table": "selfimprove.loop.table",
    "write_report": "selfimprove.loop.report",
    # generation
    "build_generator": "selfimprove.generate",
    "Sampling": "selfimprove.generate",
    "generate_rollouts": "selfimprove.generate.store",
    "RolloutStore": "selfimprove.generate.store",
    # tasks and evaluation
    "get_task": "selfimprove.tasks",
    "Task": "selfimprove.tasks",
    "evaluate": "selfimprove.eval",
    # scoring: rewards, vote, judges
    "score_rollouts": "selfimprove.score.rollouts",
    "get_reward": "selfimprove.score.rewards",
    "PointwiseJudge": "selfimprove.score.judges",
    "PairwiseJudge": "selfimprove.score.judges",
    "judge_rollouts": "selfimprove.score.judging",
    "compare_output_sets": "selfimprove.score.judging",
    # training data and trainers
    "build_sft_rows": "selfimprove.data.build",
    "build_dpo_pairs": "selfimprove.data.build",
    "build_grpo_prompts": "selfimprove.data.build",
    "train_sft": "selfimprove.train.sft",
    "train_dpo": "selfimprove.train.dpo",
    "train_grpo": "selfimprove.train.grpo",
    "LoraSettings": "selfimprove.train.common",
    # gold labels
    "check_no_gold": "selfimprove.gold",
    "supervised_reward": "selfimprove.gold",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
