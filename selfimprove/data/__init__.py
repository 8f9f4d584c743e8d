"""Training data from scored rollouts: SFT rows, DPO pairs, GRPO prompt sets (pure functions)."""

from selfimprove.data.build import BuildStats, build_dpo_pairs, build_grpo_prompts, build_sft_rows

__all__ = ["BuildStats", "build_dpo_pairs", "build_grpo_prompts", "build_sft_rows"]
