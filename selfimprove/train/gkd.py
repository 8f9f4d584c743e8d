"""Token-level distillation of a LoRA adapter through TRL's GKD trainer (teacher and student share a vocabulary).

TRL's ``GKDTrainer`` (``trl.experimental.gkd``; Agarwal et al., On-Policy Distillation of Language
Models, arXiv 2306.13649) trains the student on the generalized Jensen-Shannon divergence between
its next-token distribution and the teacher's at every completion token. With ``lmbda=0`` (the
default here) the tokens are those of the given completions (the teacher's own labelled samples):
supervised token-level KD, no generation during training. ``lmbda`` > 0 lets the student generate
that share of the batches on-policy (slow on a CPU); ``beta`` picks the divergence (0: forward KL,
1: reverse KL, 0.5: JSD). The teacher's logits are computed on the student's token ids, so both
models must have the same tokenizer: checked before training, with a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import InputError
from selfimprove.train.common import (
    LoraSettings,
    TrainResult,
    check_rows,
    drop_too_long,
    load_model_and_tokenizer,
    make_config,
    run_and_save,
)

GKD_DEFAULTS: dict[str, Any] = {
    "max_steps": -1,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 4,
    "learning_rate": 2e-4,
    "max_length": 512,
    "lmbda": 0.0,  # supervised KD on the given completions (TRL's default 0.5 generates half the batches)
    "beta": 0.5,
    "temperature": 1.0,
    "max_new_tokens": 64,
}


def gkd_classes() -> tuple[Any, Any]:
    """TRL's ``(GKDConfig, GKDTrainer)``.

    They live in ``trl.experimental`` (the API may change between TRL releases; the tests run this
    path on the installed TRL); its import warning would repeat that on every run.
    """
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    return GKDConfig, GKDTrainer


def load_teacher(teacher: str | Path, adapter: str | Path | None = None) -> tuple[Any, Any]:
    """The teacher (as ``load_model_and_tokenizer`` loads a model; an adapter merged in), in eval mode, and its tokenizer."""
    model, tokenizer, _ = load_model_and_tokenizer(teacher, None)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    return model, tokenizer


def check_same_tokenizer(student_tok: Any, teacher_tok: Any, student: str, teacher: str) -> None:
    """Raise InputError unless both tokenizers map the same strings to the same ids."""
    s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s == t:
        return
    only_s = sorted(set(s) - set(t))[:3]
    moved = sorted(k for k in set(s) & set(t) if s[k] != t[k])[:3]
    detail = f"tokens only in the student's: {only_s}" if only_s else f"tokens with other ids: {moved}"
    raise InputError(
        f"token-level distillation (GKD) needs teacher and student with the same tokenizer; {student} "
        f"({len(s)} tokens) and {teacher} ({len(t)} tokens) differ ({detail}); use SFT on the teacher's "
        "labels instead (it carries labels as text)"
    )


def train_gkd(
    model: Any,
    teacher: str | Path,
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    teacher_adapter: str | Path | None = None,
    lora: LoraSettings = LoraSettings(),
    args: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train a fresh LoRA adapter on ``model`` towards ``teacher``'s token distributions; save it to ``out_dir``.

    ``rows``: ``prompt`` (a message list) / ``completion`` (an assistant message list), as for
    :func:`selfimprove.train.sft.train_sft`. ``args``: any ``GKDConfig`` field (``lmbda``,
    ``beta``, ``temperature``, ...). Rows longer than ``max_length`` are dropped and counted.
    """
    from transformers import set_seed

    GKDConfig, GKDTrainer = gkd_classes()

    check_rows(rows, ("prompt", "completion"), "train_gkd")
    for i, row in enumerate(rows):
        if not isinstance(row["prompt"], list) or not isinstance(row["completion"], list):
            raise InputError(
                f"train_gkd: row {i}: prompt and completion must be message lists (TRL's GKD trainer "
                "reads conversations)"
            )
    config = make_config(GKDConfig, out_dir, {**GKD_DEFAULTS, "seed": seed}, args)
    set_seed(seed)
    policy, tokenizer, base_name = load_model_and_tokenizer(model, None)
    teacher_model, teacher_tok = load_teacher(teacher, teacher_adapter)
    check_same_tokenizer(tokenizer, teacher_tok, base_name, str(teacher))
    kept, n_long = drop_too_long(rows, tokenizer, config.max_length, ("completion",), "train_gkd")
    trainer = GKDTrainer(
        model=policy,
        teacher_model=teacher_model,
        args=config,
        train_dataset=_dataset(kept),
        processing_class=tokenizer,
        peft_config=lora.to_peft(),
    )
    meta = {
        "lora": lora.__dict__,
        "args": dict(args or {}),
        "teacher": str(teacher),
        "teacher_adapter": str(teacher_adapter or ""),
    }
    return run_and_save(
        trainer,
        Path(out_dir),
        method="gkd",
        base_name=base_name,
        rows_in=len(rows),
        dropped={"too_long": n_long},
        meta=meta,
    )


def _dataset(rows: Sequence[Mapping[str, Any]]):
    """Conversations (``messages``), the form TRL's ChatML collator reads; no ``prompt`` column (it
    would be taken as an already formatted prompt string)."""
    from datasets import Dataset

    return Dataset.from_list([{"messages": list(r["prompt"]) + list(r["completion"])} for r in rows])


__all__ = ["GKD_DEFAULTS", "check_same_tokenizer", "gkd_classes", "load_teacher", "train_gkd"]
