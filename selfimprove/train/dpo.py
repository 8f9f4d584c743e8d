"""DPO-family training of a LoRA adapter: TRL's loss zoo plus the toolkit's degree / D2O / NLL terms.

With only TRL loss types and no extra term, this is TRL's ``DPOTrainer`` unchanged. The degree
term, D2O and the NLL term run in ``PreferenceTrainer``, a ``DPOTrainer`` whose ``_compute_loss``
computes the same policy/reference log-probs as TRL's and then calls ``losses.preference_loss``.
Both log the chosen and rejected log-probs every step (``logps/chosen``, ``logps/rejected``):
the gradient-entanglement monitor (a margin can grow while the chosen log-prob falls).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from selfimprove.errors import ConfigError, InputError
from selfimprove.train.common import (
    LoraSettings,
    TrainResult,
    check_rows,
    drop_too_long,
    load_model_and_tokenizer,
    make_config,
    run_and_save,
)
from selfimprove.train.losses import CUSTOM_LOSS_TYPES, DEGREE_MODES, chosen_nll, preference_loss

DPO_DEFAULTS: dict[str, Any] = {
    "max_steps": -1,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 4,
    "learning_rate": 2e-5,
    "max_length": 512,
}
# Set through train_dpo's own arguments, so that a value cannot be given twice.
_OWN_ARGS = ("beta", "loss_type", "loss_weights")


def train_dpo(
    model: Any,
    pairs: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    loss_type: Sequence[str] = ("sigmoid",),
    loss_weights: Sequence[float] | None = None,
    beta: float = 0.1,
    nll_weight: float = 0.0,
    degree_weight: float = 0.0,
    degree_mode: str = "regress",
    d2o_alpha: float | None = None,
    adapter_init: str | Path | None = None,
    lora: LoraSettings = LoraSettings(),
    args: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train a LoRA adapter on ``prompt``/``chosen``/``rejected`` pairs (+ ``degree`` for the degree term).

    ``loss_type``: TRL's loss names (sigmoid, ipo, robust, ...) or the toolkit's ``d2o``; the
    extra terms (``nll_weight``, ``degree_weight`` with ``degree_mode`` weight|regress|both, ``d2o``)
    combine with ``sigmoid`` / ``d2o`` only. With ``adapter_init`` the previous adapter continues
    and is also the reference; otherwise a fresh adapter trains against the base model.
    """
    from transformers import set_seed

    loss_type = tuple([loss_type] if isinstance(loss_type, str) else loss_type)
    custom = "d2o" in loss_type or nll_weight > 0 or degree_weight > 0
    _check_loss_settings(loss_type, custom, nll_weight, degree_weight, degree_mode, args)
    required = ("prompt", "chosen", "rejected") + (("degree",) if degree_weight > 0 else ())
    check_rows(pairs, required, "train_dpo")
    defaults = {**DPO_DEFAULTS, "seed": seed, "beta": beta}
    # The custom trainer owns the loss; TRL's config still validates a plain "sigmoid".
    defaults["loss_type"] = ["sigmoid"] if custom else list(loss_type)
    if loss_weights is not None and not custom:
        defaults["loss_weights"] = list(loss_weights)
    config = make_config(DPOConfig, out_dir, defaults, args)
    set_seed(seed)
    policy, tokenizer, base_name = load_model_and_tokenizer(model, adapter_init)
    kept, n_long = drop_too_long(pairs, tokenizer, config.max_length, ("chosen", "rejected"), "train_dpo")
    columns = ("prompt", "chosen", "rejected") + (("degree",) if custom and "degree" in pairs[0] else ())
    dataset = _dataset(kept, columns)
    common = {
        "model": policy,
        "args": config,
        "train_dataset": dataset,
        "processing_class": tokenizer,
        "peft_config": None if adapter_init is not None else lora.to_peft(),
    }
    if custom:
        trainer = PreferenceTrainer(
            **common,
            data_collator=_degree_collator(tokenizer, config),
            loss_types=loss_type,
            loss_weights=tuple(loss_weights) if loss_weights else None,
            nll_weight=nll_weight,
            degree_weight=degree_weight,
            degree_mode=degree_mode,
            d2o_alpha=d2o_alpha,
        )
    else:
        trainer = DPOTrainer(**common)
    meta = {
        "lora": lora.__dict__,
        "loss_type": list(loss_type),
        "loss_weights": list(loss_weights or []),
        "beta": beta,
        "nll_weight": nll_weight,
        "degree_weight": degree_weight,
        "degree_mode": degree_mode,
        "d2o_alpha": d2o_alpha,
        "args": dict(args or {}),
        "adapter_init": str(adapter_init or ""),
    }
    return run_and_save(
        trainer,
        Path(out_dir),
        method="dpo",
        base_name=base_name,
        rows_in=len(pairs),
        dropped={"too_long": n_long},
        meta=meta,
    )


def _check_loss_settings(loss_type, custom, nll_weight, degree_weight, degree_mode, args) -> None:
    """Clear errors for loss settings that cannot work together."""
    for key in _OWN_ARGS:
        if args and key in args:
            raise ConfigError(f"train.args.{key}: set it with train_dpo's own `{key}` argument, not in args")
    if not loss_type:
        raise ConfigError("train.loss_type: at least one loss type is needed")
    if nll_weight < 0 or degree_weight < 0:
        raise ConfigError("train.nll_weight and train.degree_weight must be >= 0")
    if degree_mode not in DEGREE_MODES:
        raise ConfigError(f"train.degree_mode must be one of {list(DEGREE_MODES)}, got {degree_mode!r}")
    if custom:
        other = [t for t in loss_type if t not in CUSTOM_LOSS_TYPES]
        if other:
            raise ConfigError(
                f"train.loss_type: {other} cannot combine with d2o / nll_weight / degree_weight, "
                f"which work with {list(CUSTOM_LOSS_TYPES)} only"
            )


def _dataset(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]):
    """A ``datasets.Dataset`` with only the named columns."""
    from datasets import Dataset

    if "degree" in columns:
        for i, r in enumerate(rows):
            d = r["degree"]
            if not isinstance(d, (int, float)) or not 0.0 <= float(d) <= 1.0:
                raise InputError(f"train_dpo: row {i} has degree {d!r}; expected a number in [0, 1]")
    return Dataset.from_list([{c: (float(r[c]) if c == "degree" else r[c]) for c in columns} for r in rows])


@dataclass
class DegreeCollator(DataCollatorForPreference):
    """TRL's preference collator that also carries the per-pair ``degree`` as a tensor."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if "degree" in examples[0]:
            out["degree"] = torch.tensor([float(e["degree"]) for e in examples], dtype=torch.float32)
        return out


def _degree_collator(tokenizer, config):
    """TRL's preference collator that also carries the per-pair ``degree`` as a tensor."""
    return DegreeCollator(
        pad_token_id=tokenizer.pad_token_id,
        max_length=config.max_length,
        truncation_mode=config.truncation_mode,
        pad_to_multiple_of=config.pad_to_multiple_of,
    )


class PreferenceTrainer(DPOTrainer):
    """``DPOTrainer`` with the toolkit's loss (degree term, D2O, NLL on chosen)."""

    def __init__(
        self,
        *args: Any,
        loss_types: tuple[str, ...],
        loss_weights: tuple[float, ...] | None,
        nll_weight: float,
        degree_weight: float,
        degree_mode: str,
        d2o_alpha: float | None,
        **kwargs: Any,
    ) -> None:
        self.si_loss_types = loss_types
        self.si_loss_weights = loss_weights
        self.nll_weight = nll_weight
        self.degree_weight = degree_weight
        self.degree_mode = degree_mode
        self.d2o_alpha = d2o_alpha
        super().__init__(*args, **kwargs)
        if self.ld_alpha is not None:
            raise ConfigError("train.args.ld_alpha cannot combine with d2o / nll_weight / degree_weight")

    def _set_signature_columns_if_needed(self) -> None:
        # Keep the degree column through Trainer's unused-column removal.
        super()._set_signature_columns_if_needed()
        if "degree" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "degree"]

    def compute_ref_log_probs(self, model, inputs):
        # The degree is data for the loss, not a model input.
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != "degree"})

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        non_model = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", "degree"}
        model_kwargs = {k: v for k, v in inputs.items() if k not in non_model}
        model_kwargs["use_cache"] = False
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        # Same forward as TRL's: the fused head returns per-token log-probs (0 where label is -100).
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        per_token_logps = outputs.log_probs[:, -shift_mask.size(1) :]
        chosen_logps, rejected_logps = per_token_logps.sum(dim=1).chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            # TRL's reference pass: no grad; with PEFT the adapter is disabled (or the "ref" copy is used).
            ref_model = self.ref_model if self.ref_model is not None else model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(ref_model, inputs)
        chosen_logratios = chosen_logps - ref_chosen
        rejected_logratios = rejected_logps - ref_rejected
        loss, parts = preference_loss(
            chosen_logratios,
            rejected_logratios,
            beta=self.beta,
            loss_types=self.si_loss_types,
            loss_weights=self.si_loss_weights,
            degree=inputs.get("degree"),
            degree_weight=self.degree_weight,
            degree_mode=self.degree_mode,
            d2o_alpha=self.d2o_alpha,
        )
        if self.nll_weight > 0:
            chosen_token_logps, _ = per_token_logps.chunk(2, dim=0)
            chosen_mask, _ = shift_mask.chunk(2, dim=0)
            nll = chosen_nll(chosen_token_logps, chosen_mask)
            parts["nll"] = nll.detach()
            loss = loss + self.nll_weight * nll
        self._log_step(
            mode, inputs, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios, parts
        )
        return (loss, outputs) if return_outputs else loss

    def _log_step(self, mode, inputs, chosen_logps, rejected_logps, chosen_lr, rejected_lr, parts) -> None:
        gather = self.accelerator.gather
        metrics = self._metrics[mode]
        if mode == "train":
            n_tokens = gather(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += n_tokens
        metrics["num_tokens"] = [self._total_train_tokens]
        chosen_rewards = self.beta * chosen_lr.detach()
        rejected_rewards = self.beta * rejected_lr.detach()
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        accuracies = (chosen_rewards > rejected_rewards).float()
        metrics["rewards/accuracies"].append(gather(accuracies).mean().item())
        for name, value in parts.items():
            metrics[f"loss/{name}"].append(gather(value.reshape(1)).mean().item())
        if "degree" in inputs:
            metrics["degree/mean"].append(gather(inputs["degree"]).mean().item())
