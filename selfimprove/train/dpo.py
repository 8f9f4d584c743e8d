"""DPO-family training of a LoRA adapter: TRL's loss zoo plus the toolkit's SPO degree / D2O / NLL terms.

With only TRL loss types and no extra term, this is TRL's ``DPOTrainer`` unchanged. The extra
terms run in ``PreferenceTrainer``, a ``DPOTrainer`` whose ``_compute_loss`` computes the same
policy/reference log-probs as TRL's and then calls ``losses.preference_loss``:

- SPO (Self-supervised Preference Optimization) degree terms: ``spo_degree_gap``
  (``degree_weight``, the degree from vote-share / judge-score gaps) and ``spo_degree_paper``
  (``degree_paper_weight``, the paper's degraded responses and degree classifier);
- D2O, with K self-generated positives per negative when the pairs carry ``d2o_positives``;
- NLL on the chosen response.

Both trainers log the chosen and rejected log-probs every step (``logps/chosen``,
``logps/rejected``): the gradient-entanglement monitor (a margin can grow while the chosen
log-prob falls).
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

# How the paper-style degree classifier labels a degraded response: by removal level only
# (``removal``: classes 0..levels-1, chosen and rejected alike), or by level and by which side of
# the pair it came from (``joint``: chosen levels 0..levels-1, rejected levels..2*levels-1).
DEGREE_PAPER_LABELS = ("removal", "joint")
# Extra per-row completions the toolkit's collator carries besides chosen/rejected.
_EXTRA = ("spo", "d2o")

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
    degree_paper_weight: float = 0.0,
    degree_paper_levels: int = 3,
    degree_paper_labels: str = "removal",
    d2o_alpha: float | None = None,
    adapter_init: str | Path | None = None,
    lora: LoraSettings = LoraSettings(),
    args: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train a LoRA adapter on ``prompt``/``chosen``/``rejected`` pairs (+ ``degree``, ``d2o_positives``).

    ``loss_type``: TRL's loss names (sigmoid, ipo, robust, ...) or the toolkit's ``d2o``; the
    extra terms combine with ``sigmoid`` / ``d2o`` only:

    - ``nll_weight``: NLL on the chosen response;
    - ``degree_weight`` with ``degree_mode`` weight|regress|both: SPO's degree term, gap-based
      (``spo_degree_gap``; needs a ``degree`` column);
    - ``degree_paper_weight`` (lambda), ``degree_paper_levels``, ``degree_paper_labels``: SPO's
      degree term as its paper builds it (``spo_degree_paper``): each chosen and rejected response
      is degraded at ``degree_paper_levels`` intensities of key-content removal and a linear
      classifier on the policy's last hidden state learns the intensity, beside the alignment loss;
    - ``d2o`` with a ``d2o_positives`` column (lists of further self-generated responses): D2O's
      average over K positives (the chosen plus its positives) against the rejected response.

    With ``adapter_init`` the previous adapter continues and is also the reference; otherwise a
    fresh adapter trains against the base model.
    """
    from transformers import set_seed

    loss_type = tuple([loss_type] if isinstance(loss_type, str) else loss_type)
    custom = "d2o" in loss_type or nll_weight > 0 or degree_weight > 0 or degree_paper_weight > 0
    _check_loss_settings(loss_type, custom, nll_weight, degree_weight, degree_mode, args)
    _check_degree_paper(degree_paper_weight, degree_paper_levels, degree_paper_labels)
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
    if "d2o" in loss_type and "d2o_positives" in pairs[0]:
        columns += ("d2o_positives",)
    dataset = _dataset(kept, columns)
    if degree_paper_weight > 0:
        dataset = _with_degraded(dataset, degree_paper_levels, degree_paper_labels)
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
            degree_paper_weight=degree_paper_weight,
            degree_paper_classes=_degree_paper_classes(degree_paper_levels, degree_paper_labels),
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
        "degree_paper_weight": degree_paper_weight,
        "degree_paper_levels": degree_paper_levels,
        "degree_paper_labels": degree_paper_labels,
        "d2o_alpha": d2o_alpha,
        "d2o_positives": "d2o_positives" in columns,
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


def _check_degree_paper(weight: float, levels: int, labels: str) -> None:
    """Clear errors for the paper-style SPO degree settings."""
    if weight < 0:
        raise ConfigError("train.degree_paper_weight must be >= 0")
    if not isinstance(levels, int) or levels < 2:
        raise ConfigError(f"train.degree_paper_levels must be an integer >= 2, got {levels!r}")
    if labels not in DEGREE_PAPER_LABELS:
        raise ConfigError(
            f"train.degree_paper_labels must be one of {list(DEGREE_PAPER_LABELS)}, got {labels!r}"
        )


def _degree_paper_classes(levels: int, labels: str) -> int:
    """Number of classes of the paper-style degree classifier."""
    return levels * (2 if labels == "joint" else 1)


def _text(completion: Any) -> str:
    """The text of a completion given as a string or as an assistant message list."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion)
    return str(completion)


def _dataset(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]):
    """A ``datasets.Dataset`` with only the named columns (``d2o_positives`` as lists of texts)."""
    from datasets import Dataset

    if "degree" in columns:
        for i, r in enumerate(rows):
            d = r["degree"]
            if not isinstance(d, (int, float)) or not 0.0 <= float(d) <= 1.0:
                raise InputError(f"train_dpo: row {i} has degree {d!r}; expected a number in [0, 1]")
    if "d2o_positives" in columns:
        for i, r in enumerate(rows):
            if not isinstance(r.get("d2o_positives"), list):
                raise InputError(
                    f"train_dpo: row {i} has no d2o_positives list (every row needs one, [] allowed)"
                )

    def value(r: Mapping[str, Any], c: str) -> Any:
        if c == "degree":
            return float(r[c])
        if c == "d2o_positives":
            return [_text(x) for x in r[c]]
        return r[c]

    return Dataset.from_list([{c: value(r, c) for c in columns} for r in rows])


def _with_degraded(dataset, levels: int, labels: str):
    """Add ``spo_texts``/``spo_labels``: the chosen and rejected responses degraded at each level."""
    from selfimprove.data.degrade import degraded_variants

    def add(row: dict[str, Any]) -> dict[str, Any]:
        texts, labs = [], []
        for side, key in enumerate(("chosen", "rejected")):
            offset = side * levels if labels == "joint" else 0
            for level, text in degraded_variants(_text(row[key]), levels):
                texts.append(text)
                labs.append(offset + level)
        return {"spo_texts": texts, "spo_labels": labs}

    return dataset.map(add)


@dataclass
class DegreeCollator(DataCollatorForPreference):
    """TRL's preference collator that also carries ``degree`` and the extra completions of each row.

    Extra completions (``spo_ids`` degraded responses with ``spo_labels``, ``d2o_ids`` D2O
    positives) become their own padded batch: ``<name>_input_ids``, ``<name>_attention_mask``,
    ``<name>_completion_mask`` and ``<name>_row`` (the pair each belongs to), built as TRL builds
    the chosen/rejected sequences (prompt ids + completion ids, truncated like them).
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if "degree" in examples[0]:
            out["degree"] = torch.tensor([float(e["degree"]) for e in examples], dtype=torch.float32)
        for name in _EXTRA:
            if f"{name}_ids" in examples[0]:
                out.update(self._extra(examples, name))
        return out

    def _extra(self, examples: list[dict[str, Any]], name: str) -> dict[str, torch.Tensor]:
        from trl.trainer.utils import pad

        ids, masks, rows, labels = [], [], [], []
        for i, e in enumerate(examples):
            for j, completion in enumerate(e[f"{name}_ids"]):
                seq = list(e["prompt_ids"]) + list(completion)
                mask = [0] * len(e["prompt_ids"]) + [1] * len(completion)
                if self.max_length is not None:
                    sl = (
                        slice(None, self.max_length)
                        if self.truncation_mode == "keep_start"
                        else slice(-self.max_length, None)
                    )
                    seq, mask = seq[sl], mask[sl]
                ids.append(torch.tensor(seq))
                masks.append(torch.tensor(mask, dtype=torch.long))
                rows.append(i)
                if name == "spo":
                    labels.append(int(e["spo_labels"][j]))
        out: dict[str, torch.Tensor] = {f"{name}_row": torch.tensor(rows, dtype=torch.long)}
        if ids:
            out[f"{name}_input_ids"] = pad(ids, padding_value=self.pad_token_id, padding_side="right")
            out[f"{name}_attention_mask"] = pad(
                [torch.ones_like(x) for x in ids], padding_value=0, padding_side="right"
            )
            out[f"{name}_completion_mask"] = pad(masks, padding_value=0, padding_side="right")
        if name == "spo":
            out["spo_labels"] = torch.tensor(labels, dtype=torch.long)
        return out


def _degree_collator(tokenizer, config):
    """TRL's preference collator that also carries ``degree`` and the extra completions of each row."""
    return DegreeCollator(
        pad_token_id=tokenizer.pad_token_id,
        max_length=config.max_length,
        truncation_mode=config.truncation_mode,
        pad_to_multiple_of=config.pad_to_multiple_of,
    )


class PreferenceTrainer(DPOTrainer):
    """``DPOTrainer`` with the toolkit's loss (SPO degree terms, D2O, NLL on chosen)."""

    def __init__(
        self,
        *args: Any,
        loss_types: tuple[str, ...],
        loss_weights: tuple[float, ...] | None,
        nll_weight: float,
        degree_weight: float,
        degree_mode: str,
        d2o_alpha: float | None,
        degree_paper_weight: float = 0.0,
        degree_paper_classes: int = 0,
        **kwargs: Any,
    ) -> None:
        self.si_loss_types = loss_types
        self.si_loss_weights = loss_weights
        self.nll_weight = nll_weight
        self.degree_weight = degree_weight
        self.degree_mode = degree_mode
        self.d2o_alpha = d2o_alpha
        self.degree_paper_weight = degree_paper_weight
        super().__init__(*args, **kwargs)
        if self.ld_alpha is not None:
            raise ConfigError("train.args.ld_alpha cannot combine with d2o / nll_weight / degree_weight")
        self.degree_head: torch.nn.Linear | None = None
        if degree_paper_weight > 0:
            if self.accelerator.num_processes > 1:
                # The classifier lives outside the DDP-wrapped model, so its gradients would not be
                # averaged across processes.
                raise ConfigError("train.degree_paper_weight > 0 trains on one process only")
            hidden = int(self.model.config.hidden_size)
            param = next(self.model.parameters())
            # Zero weights: every class starts equally likely, so the first step's degree loss is
            # exactly log(classes) (checked in tests/test_train_dpo.py).
            head = torch.nn.Linear(hidden, degree_paper_classes, device=param.device, dtype=param.dtype)
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
            self.degree_head = head

    def create_optimizer(self, *args: Any, **kwargs: Any):
        # The degree classifier trains with the adapter but is not part of it (never saved).
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.degree_head is not None and not getattr(self, "_degree_head_added", False):
            optimizer.add_param_group({"params": list(self.degree_head.parameters()), "weight_decay": 0.0})
            self._degree_head_added = True
        return optimizer

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # TRL tokenizes prompt/chosen/rejected; the extra completions are tokenized the same way.
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        names = [
            n for n, col in (("spo", "spo_texts"), ("d2o", "d2o_positives")) if col in dataset.column_names
        ]
        if not names:
            return dataset
        from trl.data_utils import _tokenize, common_prefix_length, is_conversational

        eos = processing_class.eos_token or ""

        def ids_of(row: dict[str, Any], text: str) -> list[int]:
            if is_conversational(row):
                full = _tokenize(processing_class, row["prompt"] + [{"role": "assistant", "content": text}])
            else:
                full = _tokenize(
                    processing_class, row["prompt"] + (text if text.endswith(eos) else text + eos)
                )
            full_ids = list(full["input_ids"])
            prompt_ids = list(row["prompt_ids"])
            return full_ids[common_prefix_length(prompt_ids, full_ids) :]

        def tokenize(row: dict[str, Any]) -> dict[str, Any]:
            out = {}
            if "spo" in names:
                out["spo_ids"] = [ids_of(row, t) for t in row["spo_texts"]]
            if "d2o" in names:
                out["d2o_ids"] = [ids_of(row, t) for t in row["d2o_positives"]]
            return out

        return dataset.map(tokenize)

    def _set_signature_columns_if_needed(self) -> None:
        # Keep the degree and extra-completion columns through Trainer's unused-column removal.
        super()._set_signature_columns_if_needed()
        extra = ["degree", "spo_ids", "spo_labels", "d2o_ids"]
        self._signature_columns = [
            *self._signature_columns,
            *(c for c in extra if c not in self._signature_columns),
        ]

    def compute_ref_log_probs(self, model, inputs):
        # The degree and the extra completions are data for the loss, not model inputs.
        return super().compute_ref_log_probs(model, _pair_inputs(inputs))

    def _sequence_logps(
        self, model, inputs: Mapping[str, torch.Tensor], name: str, reference: bool
    ) -> torch.Tensor:
        """Summed completion log-probs of the ``name`` extra sequences, under the policy or the reference."""
        import contextlib

        from accelerate.utils import is_peft_model
        from trl.trainer.utils import use_adapter

        ids, attn, cmask = (inputs[f"{name}_{k}"] for k in ("input_ids", "attention_mask", "completion_mask"))
        labels = ids.masked_fill(cmask == 0, -100)
        context = contextlib.nullcontext()
        if reference:
            context = torch.no_grad()
            if self.ref_model is None and is_peft_model(self.model):
                unwrapped = self.accelerator.unwrap_model(self.model)
                ref_name = "ref" if "ref" in unwrapped.peft_config else None
                adapter = use_adapter(unwrapped, adapter_name=ref_name)
                stack = contextlib.ExitStack()
                stack.enter_context(torch.no_grad())
                stack.enter_context(adapter)
                context = stack
            elif self.ref_model is not None:
                model = self.ref_model
        with context:
            out = model(
                input_ids=ids, attention_mask=attn, labels=labels, fused_lm_head=True, use_cache=False
            )
        shift = cmask[..., 1:]
        return out.log_probs[:, -shift.size(1) :].sum(dim=1)

    def _d2o_positives(self, model, inputs, chosen_logratios: torch.Tensor):
        """(B, 1 + K) positive log-ratios (the chosen first) and their mask, from ``d2o_*`` inputs."""
        rows = inputs["d2o_row"]
        b = chosen_logratios.size(0)
        counts = torch.bincount(rows, minlength=b) if rows.numel() else torch.zeros(b, dtype=torch.long)
        width = 1 + int(counts.max().item()) if rows.numel() else 1
        positives = chosen_logratios.new_zeros((b, width))
        mask = chosen_logratios.new_zeros((b, width))
        positives[:, 0] = chosen_logratios
        mask[:, 0] = 1.0
        if rows.numel():
            extra = self._sequence_logps(model, inputs, "d2o", False)
            extra = extra - self._sequence_logps(model, inputs, "d2o", True)
            slot = torch.zeros(b, dtype=torch.long)
            for i, row in enumerate(rows.tolist()):
                slot[row] += 1
                positives[row, slot[row]] = extra[i]
                mask[row, slot[row]] = 1.0
        return positives, mask

    def _degree_paper_logits(self, model, inputs) -> torch.Tensor:
        """The degree classifier's logits on the last token's final hidden state of each degraded response."""
        ids, attn = inputs["spo_input_ids"], inputs["spo_attention_mask"]
        out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]
        last = attn.sum(dim=1) - 1  # right-padded: the last real token
        features = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        return self.degree_head(features)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        model_kwargs = _pair_inputs(inputs)
        model_kwargs = {
            k: v
            for k, v in model_kwargs.items()
            if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
        }
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
        positives = mask = None
        if "d2o" in self.si_loss_types and "d2o_row" in inputs:
            positives, mask = self._d2o_positives(model, inputs, chosen_logratios)
        paper_logits = self._degree_paper_logits(model, inputs) if self.degree_head is not None else None
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
            d2o_positive_logratios=positives,
            d2o_positive_mask=mask,
            degree_paper_logits=paper_logits,
            degree_paper_labels=inputs.get("spo_labels"),
            degree_paper_weight=self.degree_paper_weight,
        )
        if self.nll_weight > 0:
            chosen_token_logps, _ = per_token_logps.chunk(2, dim=0)
            chosen_mask, _ = shift_mask.chunk(2, dim=0)
            nll = chosen_nll(chosen_token_logps, chosen_mask)
            parts["nll"] = nll.detach()
            loss = loss + self.nll_weight * nll
        if paper_logits is not None:
            accuracy = (paper_logits.argmax(dim=1) == inputs["spo_labels"]).float().mean()
            parts["degree_paper_accuracy"] = accuracy.detach()
        if mask is not None:
            parts["d2o_positives"] = mask.sum(dim=1).mean().detach()
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
            key = {"degree_paper_accuracy": "degree_paper/accuracy", "d2o_positives": "d2o/positives"}.get(
                name, f"loss/{name}"
            )
            metrics[key].append(gather(value.reshape(1)).mean().item())
        if "degree" in inputs:
            metrics["degree/mean"].append(gather(inputs["degree"]).mean().item())


def _pair_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The chosen/rejected batch of ``inputs`` without the degree and the extra completions."""
    skip = {"degree", "spo_labels"}
    return {
        k: v for k, v in inputs.items() if k not in skip and not any(k.startswith(f"{n}_") for n in _EXTRA)
    }
