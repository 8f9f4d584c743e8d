"""Run train_sft, train_dpo and train_grpo for a couple of steps under ``accelerate launch``.

Used by tests/test_train_multiprocess.py:
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
        tests/scripts/train_multiproc.py MODEL_DIR OUT_DIR [sft dpo grpo]
Rank 0 writes OUT_DIR/results.json: per method the steps, losses, world size and adapter path.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def digit_share(completions, **columns):
    """A dense reward that varies within a group."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def main() -> None:
    from selfimprove.score.rewards import get_reward
    from selfimprove.train.dpo import train_dpo
    from selfimprove.train.grpo import train_grpo
    from selfimprove.train.sft import train_sft

    model, out = sys.argv[1], Path(sys.argv[2])
    methods = sys.argv[3:] or ["sft", "dpo", "grpo"]
    chat = [[{"role": "user", "content": f"what is {i}+{i}?"}] for i in range(8)]
    common = {"max_steps": 1, "per_device_train_batch_size": 2, "disable_tqdm": True, "learning_rate": 1e-3}
    results = {}
    if "sft" in methods:
        rows = [
            {"prompt": p, "completion": [{"role": "assistant", "content": f"= {2 * i}"}]}
            for i, p in enumerate(chat)
        ]
        r = train_sft(model, rows, out / "sft", args={**common, "max_length": 64})
        results["sft"] = r
    if "dpo" in methods:
        pairs = [
            {
                "prompt": p,
                "chosen": [{"role": "assistant", "content": f"= {2 * i}"}],
                "rejected": [{"role": "assistant", "content": f"= {2 * i + 1}"}],
                "degree": 0.5,
            }
            for i, p in enumerate(chat)
        ]
        args = {**common, "max_length": 64}
        results["dpo"] = train_dpo(model, pairs, out / "dpo", degree_weight=0.5, nll_weight=0.1, args=args)
    if "grpo" in methods:
        prompts = [{"prompt": p, "prompt_id": str(i)} for i, p in enumerate(chat)]
        args = {**common, "max_completion_length": 8}
        del args["per_device_train_batch_size"]  # train_grpo's default: two groups per process
        rewards = [get_reward("majority_vote"), digit_share]
        results["grpo"] = train_grpo(model, prompts, rewards, out / "grpo", num_generations=2, args=args)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {
            name: {
                "steps": r.steps,
                "loss_history": r.loss_history,
                "adapter_path": str(r.adapter_path),
                "world_size": world,
            }
            for name, r in results.items()
        }
        (out / "results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    from selfimprove.train.launch import _leave

    main()
    _leave(0)  # close the gloo group and exit without the teardown that can abort a rank (SIGABRT)
