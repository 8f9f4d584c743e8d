"""One round of label-free self-training composed from the stages, from Python.

generate (n samples per train prompt) -> score (majority vote: the pseudo-label) -> build (SFT rows
from the samples that agree with the vote) -> train (a LoRA adapter) -> evaluate (pass@1, maj@k
against gold, before and after). Gold answers are only read by ``evaluate``.

    python scripts/self_training_round.py                      # the shipped string_ops model
    python scripts/self_training_round.py --model DIR --task my_task.jsonl --out /tmp/round
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfimprove import (
    LoraSettings,
    RolloutStore,
    Sampling,
    build_generator,
    build_sft_rows,
    evaluate,
    generate_rollouts,
    get_task,
    score_rollouts,
    train_sft,
)
from selfimprove.models.loading import resolve_model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:string_ops", help="model folder or builtin:<task>")
    parser.add_argument("--task", default="string_ops", help="bundled task name or a .jsonl task file")
    parser.add_argument("--out", type=Path, default=Path("runs/self_training_round"))
    parser.add_argument("--prompts", type=int, default=32, help="train prompts (all of a file task if 0)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20, help="training steps")
    parser.add_argument("--answer-pattern", help="read answers with this regex (a .jsonl task only)")
    parser.add_argument("--keep-truncated", action="store_true", help="train on samples cut at --max-tokens")
    args = parser.parse_args(argv)

    model = resolve_model(args.model)
    pattern = {"extractor": "regex", "extractor_options": {"pattern": args.answer_pattern, "which": "first"}}
    task = get_task(args.task, **(pattern if args.answer_pattern else {}))
    generator = build_generator("hf", model)
    try:
        # generate: the train split's prompts only; its gold mapping is dropped right here.
        prompts, _gold = task.make_split("train", n=args.prompts or None, seed=0)
        sampling = Sampling(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0)
        rollouts = generate_rollouts(generator, prompts, sampling, RolloutStore(args.out / "round_01"))
        # score: extract answers, vote; the default reward is agreement with the vote.
        scored = score_rollouts(rollouts, task.extractor, extractor_options=task.extractor_options)
        # build: SFT rows from the samples whose answer is the pseudo-label.
        rows, stats = build_sft_rows(scored, drop_truncated=not args.keep_truncated)
        print(stats.summary())
        if not rows:
            raise SystemExit(f"no training data: {stats.why_empty()}")
        # train: a LoRA adapter on those rows.
        adapter = args.out / "round_01" / "adapter"
        result = train_sft(
            model,
            rows,
            adapter,
            lora=LoraSettings(r=8, alpha=16),
            args={"max_steps": args.steps, "per_device_train_batch_size": 8, "learning_rate": 1e-3},
        )
        # evaluate: base model and adapter on the eval split (gold read here only).
        eval_sampling = Sampling(n=4, temperature=1.0, max_tokens=args.max_tokens, seed=1)
        before = evaluate(generator, task, eval_sampling, out_dir=args.out / "eval_base")
        after = evaluate(generator, task, eval_sampling, adapter=adapter, out_dir=args.out / "eval_round_01")
    finally:
        generator.close()
    summary = {"rows": len(rows), "train_loss": result.loss_history[-1], "before": before, "after": after}
    print(
        f"pass@1 {before['pass@1']:.3f} -> {after['pass@1']:.3f}, maj@4 {before['maj@4']:.3f} -> {after['maj@4']:.3f}"
    )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
