"""SFT of a LoRA adapter on selected rollouts (rejection sampling / STaR / RAFT / ReST-EM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.train.common import (
    LoraSettings,
    TrainResult,
    check_rows,
    drop_too_long,
    load_model_and_tokenizer,
    make_config,
    run_and_save,
)

SFT_DEFAULTS: dict[str, Any] = {
    "max_steps": -1,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 4,
    "learning_rate": 2e-4,  # LoRA wants a larger rate than TRL's full-model 2e-5
    "max_length": 512,
    "completion_only_loss": True,  # loss on the completion, not on the prompt
}


def train_sft(
    model: Any,
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    adapter_init: str | Path | None = None,
    lora: LoraSettings = LoraSettings(),
    args: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> TrainResult:
    """Fine-tune a LoRA adapter on ``prompt``/``completion`` rows; save it to ``out_dir``.

    ``adapter_init`` continues a previous round's adapter; None starts a fresh adapter on the base
    (ReST-EM). ``args`` are any ``trl.SFTConfig`` fields. Rows longer than ``max_length`` are
    dropped and counted.
    """
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    check_rows(rows, ("prompt", "completion"), "train_sft")
    config = make_config(SFTConfig, out_dir, {**SFT_DEFAULTS, "seed": seed}, args)
    set_seed(seed)
    policy, tokenizer, base_name = load_model_and_tokenizer(model, adapter_init)
    kept, n_long = drop_too_long(rows, tokenizer, config.max_length, ("completion",), "train_sft")
    trainer = SFTTrainer(
        model=policy,
        args=config,
        train_dataset=_dataset(kept),
        processing_class=tokenizer,
        peft_config=None if adapter_init is not None else lora.to_peft(),
    )
    meta = {"lora": lora.__dict__, "args": dict(args or {}), "adapter_init": str(adapter_init or "")}
    return run_and_save(
        trainer,
        Path(out_dir),
        method="sft",
        base_name=base_name,
        rows_in=len(rows),
        dropped={"too_long": n_long},
        meta=meta,
    )


def _dataset(rows: Sequence[Mapping[str, Any]]):
    """A ``datasets.Dataset`` with only the columns TRL reads."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
