"""A self-training run driven by a config dict from Python, with a reward function of your own.

The dict has the keys of a YAML run config (docs/loop.md); ``run`` writes the same run folder as
``selfimprove run`` (resumable, with a report) and returns the summary with the round table's
numbers. The reward here is written in Python, in TRL's call shape (``f(completions, **columns)``,
the columns being ``prompt_id``, ``pseudo_label`` and the prompts' ``meta`` fields): 1 for a
sample that agrees with its prompt's majority vote, 0.5 more for a short one.

    python scripts/run_from_dict.py                            # the shipped string_ops model
    python scripts/run_from_dict.py --model DIR --task my_task.jsonl --out /tmp/run
"""

from __future__ import annotations

import argparse
from pathlib import Path

from selfimprove import get_task, load_config, round_table, run, write_report
from selfimprove.score.rewards import completion_text


def make_reward(extract):
    """A label-free reward reading answers with ``extract`` (the task's own extractor)."""

    def agrees_and_short(completions, pseudo_label, **columns):
        """Agreement with the vote, plus 0.5 for a completion under 40 characters."""
        out = []
        for completion, label in zip(completions, pseudo_label, strict=True):
            if label is None:
                out.append(None)  # the vote abstained: cannot score
                continue
            text = completion_text(completion)
            out.append(float(extract(text) == label) + 0.5 * (len(text) < 40))
        return out

    return agrees_and_short


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:string_ops", help="model folder or builtin:<task>")
    parser.add_argument("--task", default="string_ops", help="bundled task name or a .jsonl task file")
    parser.add_argument("--out", type=Path, default=Path("runs/run_from_dict"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--answer-pattern", help="read answers with this regex (a .jsonl task only)")
    args = parser.parse_args(argv)

    task = {"file": args.task, "name": None} if args.task.endswith(".jsonl") else {"name": args.task}
    if args.answer_pattern:
        task.update(extractor="regex", extractor_options={"pattern": args.answer_pattern, "which": "first"})
    config = load_config(
        {
            "name": "run-from-dict",
            "description": "a run driven from Python with a reward of its own",
            "model": {"path": args.model},
            "task": {**task, "train_size": 32, "eval_size": 16},
            "generation": {"backend": "hf", "n": 4, "max_tokens": args.max_tokens, "batch_size": 16},
            "data": {"sft": {"select": "reward", "drop_truncated": False}},
            "training": {"method": "sft", "max_steps": 4, "batch_size": 8, "lora": {"rank": 8, "alpha": 16}},
            "evaluation": {"n": 4, "k": [1, 4]},
            "loop": {"rounds": args.rounds},
        }
    )
    options = {k: task[k] for k in ("extractor", "extractor_options") if k in task}
    reward = make_reward(get_task(args.task, **options).extract)
    summary = run(config, args.out, rewards=[reward], progress=False)
    print(round_table(summary["history"], config.evaluation.k))
    paths = write_report(args.out)
    print(f"report: {paths['md']}")
    return summary


if __name__ == "__main__":
    main()
