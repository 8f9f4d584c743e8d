"""What the three trainers share: LoRA settings, TRL config building, model loading, results.

Kept apart from ``sft.py`` / ``dpo.py`` / ``grpo.py`` so each of those reads top to bottom:
config, model, data, trainer, train, save.
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfimprove.errors import ConfigError, InputError


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter trained by every trainer (PEFT ``LoraConfig`` fields)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # "all-linear" adapts every linear layer except the output head (PEFT's shorthand).
    target_modules: str | tuple[str, ...] = "all-linear"
    bias: str = "none"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")

    def to_peft(self):
        """The PEFT ``LoraConfig`` for a causal LM."""
        from peft import LoraConfig

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            bias=self.bias,
            task_type="CAUSAL_LM",
        )


@dataclass
class TrainResult:
    """What a training call produced: the adapter folder and what happened on the way."""

    adapter_path: Path
    method: str
    steps: int
    loss_history: list[float]
    metrics: dict[str, Any]
    seconds: float
    tokens: int
    rows_in: int
    # Rows dropped before training, by reason (e.g. "too_long": 3).
    dropped: dict[str, int] = field(default_factory=dict)
    # Per-step values of every logged metric (e.g. "logps/chosen"), for monitors and plots.
    history: dict[str, list[float]] = field(default_factory=dict)
    # Processes that trained together (accelerate's num_processes; 1 in a single process).
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        d = dataclasses.asdict(self)
        d["adapter_path"] = str(self.adapter_path)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainResult:
        """The result :meth:`to_dict` wrote (e.g. ``train_result.json``); unknown keys are left out."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["adapter_path"] = Path(values["adapter_path"])
        return cls(**values)


def cpu_safe_defaults() -> dict[str, Any]:
    """TRL config values that work on a CPU-only machine (see docs/training.md)."""
    import torch

    on_gpu = torch.cuda.is_available()
    return {
        "use_cpu": not on_gpu,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": False,
        "dataloader_num_workers": 0,
    }


def make_config(config_cls, out_dir: str | Path, defaults: Mapping[str, Any], args: Mapping[str, Any] | None):
    """Build a TRL config: CPU-safe defaults, then the method's defaults, then the user's ``args``.

    An unknown field raises ``ConfigError`` naming it and listing close matches.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    args = dict(args or {})
    for key in args:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=4, cutoff=0.6)
            hint = f"; did you mean {close}?" if close else ""
            raise ConfigError(f"train.args.{key}: not a field of {config_cls.__name__}{hint}")
    values = {**cpu_safe_defaults(), **defaults, **args, "output_dir": str(out_dir)}
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train.args: {config_cls.__name__} rejected the settings: {exc}") from exc


def load_model_and_tokenizer(model: Any, adapter_init: str | Path | None):
    """Load the base model and its tokenizer; optionally a trainable adapter.

    ``model`` is a loaded model, a local folder or ``builtin:<task>`` (``models.loading.resolve_model``);
    folders load in float32, safetensors only, no remote code. Returns ``(model, tokenizer,
    base_name)``; with ``adapter_init`` the model is a ``PeftModel`` whose adapter continues
    training (the previous round's adapter).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model, (str, Path)):
        from selfimprove.models.loading import resolve_model

        path = resolve_model(str(model), progress=False)
        base_name = str(path)
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, trust_remote_code=False, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    else:
        hf_model = model
        base_name = str(getattr(model.config, "_name_or_path", "") or "model")
        tokenizer = AutoTokenizer.from_pretrained(base_name, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter_init is not None:
        from selfimprove.train.adapters import load_adapter_for_training

        hf_model = load_adapter_for_training(hf_model, adapter_init)
    return hf_model, tokenizer, base_name


def check_rows(rows: Sequence[Mapping[str, Any]], required: Sequence[str], what: str) -> None:
    """Refuse empty data and rows missing a required column, naming the row and column."""
    if len(rows) == 0:
        raise InputError(
            f"{what}: no training rows (empty data after filtering); refusing a zero-step training. "
            f"Check the builder's BuildStats for why everything was dropped."
        )
    for i, row in enumerate(rows):
        missing = [c for c in required if c not in row]
        if missing:
            raise InputError(f"{what}: row {i} is missing column(s) {missing}; required: {list(required)}")


def _text_len(tokenizer, prompt: Any, completion: Any) -> int:
    """Token count of prompt + completion, rendered the way TRL renders them."""
    if isinstance(prompt, list):
        comp = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        text = tokenizer.apply_chat_template(prompt + comp, tokenize=False)
    else:
        text = prompt + (completion if isinstance(completion, str) else "") + (tokenizer.eos_token or "")
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def drop_too_long(
    rows: Sequence[Mapping[str, Any]],
    tokenizer,
    max_length: int | None,
    completion_keys: Sequence[str],
    what: str,
) -> tuple[list[Mapping[str, Any]], int]:
    """Drop rows whose prompt + any completion exceeds ``max_length`` tokens; return (kept, n_dropped).

    Dropping (rather than TRL's silent truncation) keeps every training target whole; the count is
    reported in ``TrainResult.dropped['too_long']``. All rows too long is an error.
    """
    if max_length is None:
        return list(rows), 0
    kept = [
        r for r in rows if max(_text_len(tokenizer, r["prompt"], r[k]) for k in completion_keys) <= max_length
    ]
    n_dropped = len(rows) - len(kept)
    if not kept:
        raise InputError(
            f"{what}: all {len(rows)} rows are longer than max_length={max_length} tokens; "
            f"raise train.args.max_length or shorten the data"
        )
    return kept, n_dropped


def run_and_save(
    trainer, out_dir: Path, *, method: str, base_name: str, rows_in: int, dropped: dict, meta: dict
):
    """Train, save the adapter with ``adapter_meta.json``, and collect a ``TrainResult``."""
    from selfimprove.train.adapters import save_adapter

    timer = StepTimer()
    trainer.add_callback(timer)
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    logs = trainer.state.log_history
    history: dict[str, list[float]] = {}
    for entry in logs:
        if "train_runtime" in entry:  # the end-of-training summary, not a step
            continue
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                history.setdefault(key, []).append(float(value))
    losses = history.get("loss", [])
    tokens = int(trainer.state.num_input_tokens_seen or 0) or int(max(history.get("num_tokens", [0]) or [0]))
    steps = int(trainer.state.global_step)
    if steps == 0:
        raise InputError(f"{method}: training ran 0 steps (check max_steps / num_train_epochs / batch size)")
    model = trainer.model
    if hasattr(model, "peft_config") and "ref" in model.peft_config:
        # DPO's frozen copy of the starting adapter; the saved adapter is the trained "default" one.
        model.delete_adapter("ref")
    path = save_adapter(
        model,
        out_dir,
        base_model=base_name,
        method=method,
        steps=steps,
        config=meta,
        tokenizer=trainer.processing_class,
        is_main_process=trainer.is_world_process_zero(),
    )
    metrics = dict(output.metrics)
    metrics["device"] = str(next(model.parameters()).device)  # where the weights trained (cpu, cuda:0)
    if timer.step_seconds:
        metrics["time/step_s"] = sum(timer.step_seconds) / len(timer.step_seconds)
        history["time/step_s"] = list(timer.step_seconds)
        history["time/step_cpu_s"] = list(timer.step_cpu_seconds)
    result = TrainResult(
        adapter_path=path,
        method=method,
        steps=steps,
        loss_history=losses,
        metrics=metrics,
        seconds=seconds,
        tokens=tokens,
        rows_in=rows_in,
        dropped=dropped,
        history=history,
        world_size=int(trainer.accelerator.num_processes),
    )
    if trainer.is_world_process_zero():
        write_result(result, out_dir)
    return result


def write_result(result: TrainResult, out_dir: str | Path) -> None:
    """Write ``train_result.json`` atomically."""
    from selfimprove.runs.io import write_json_atomic

    write_json_atomic(Path(out_dir) / "train_result.json", result.to_dict())


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class StepTimer(_callback_base()):
    """A trainer callback recording the wall time of every optimizer step."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        # CPU seconds of this process (all threads) per step: less sensitive than wall time to
        # other work sharing the machine.
        self.step_cpu_seconds: list[float] = []
        self._start: float | None = None
        self._cpu_start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.step_seconds.append(time.perf_counter() - self._start)
            self.step_cpu_seconds.append(time.process_time() - self._cpu_start)
            self._start = None
