"""Run TRL's GRPOTrainer for a few steps with selfimprove rewards and record every reward call.

Used by tests/test_rewards_multiprocess.py under ``accelerate launch --num_processes 2 --cpu``
(and runnable on one process). Each rank writes ``rank<r>.json``: for every reward call the
prompts, prompt ids, completions and the rewards it returned; rank 0 also writes the trainer's
log history. The test recomputes the rewards on one process from the gathered completions.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


class Recorder:
    """Wraps a reward function and records each call (TRL sees the wrapped function's name)."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls
        self.__name__ = inner.__name__

    def __call__(self, completions, **columns):
        rewards = self.inner(completions, **columns)
        self.calls.append(
            {
                "reward": self.__name__,
                "prompts": list(columns["prompts"]),
                "prompt_id": list(columns["prompt_id"]),
                "pseudo_label": list(columns["pseudo_label"]),
                "completions": list(completions),
                "rewards": list(rewards),
            }
        )
        return rewards


def main() -> None:
    """Parse arguments, train, write the records."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--per-device-batch", type=int, default=2)
    args = parser.parse_args()

    import torch.distributed as dist
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from selfimprove.score.rewards import get_reward

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = ["Q1: pick", "Q2: pick", "Q3: pick", "Q4: pick"]
    data = Dataset.from_dict(
        {"prompt": prompts, "prompt_id": [f"p{i}" for i in range(4)], "pseudo_label": ["a", "b", "c", "d"]}
    )
    # The first character of the completion is the "answer": a random tiny model disagrees often.
    extractor = {"extractor": "regex", "extractor_options": {"pattern": r"(\S)", "which": "first"}}
    calls: list[dict] = []
    rewards = [
        Recorder(get_reward("majority_vote", **extractor), calls),
        Recorder(get_reward("pseudo_label", **extractor), calls),
    ]
    config = GRPOConfig(
        output_dir=str(Path(args.out) / "trainer"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=args.per_device_batch,
        num_generations=4,
        max_completion_length=6,
        max_steps=args.steps,
        learning_rate=5e-3,
        temperature=1.5,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        shuffle_dataset=False,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=rewards,
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"rank": rank, "world": world, "calls": calls, "log_history": trainer.state.log_history}
    tmp = out / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, out / f"rank{rank}.json")


if __name__ == "__main__":
    from selfimprove.train.launch import _leave

    main()
    _leave(0)  # close the gloo group and exit without the teardown that can abort a rank (SIGABRT)
