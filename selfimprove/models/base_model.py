"""The embedded demo base model: a small Qwen2 built from scratch and pre-trained on a task's base split.

The label-free loop needs a starting model that is partially competent: right often enough that a
majority vote over its samples is informative, wrong often enough that there is room to improve.
No pretrained model fits on this machine without a hub, so the toolkit builds one: a Qwen2 with
head_dim 64 (vLLM's CPU kernels accept it), a character tokenizer and a compact chat template,
trained with supervised next-token loss on worked solutions from the task's "base" split only
(disjoint from the "train" and "eval" splits). A set share of those solutions carries a plausible
slip (``slip_rate``), so the model learns the task but, sampled, makes mistakes about that often:
its most likely answer is mostly right while single samples often are not, which is the regime
label-free self-training can improve. Everything is seeded; the result is cached under
``$SELFIMPROVE_CACHE`` (default ``~/.cache/selfimprove``) in ``base-<task>-<build key>/`` and
written atomically (temporary folder, then rename), with ``base_model.json`` recording the settings
and the measured sampled pass@1 / maj@k / pass@k on held-out eval prompts.

The weights a build produces depend on the machine as well as on the settings: the CPU's vector
kernels and the precision change the order of floating-point sums, and the step at which a task
"clicks" moves with them. So the build key hashes the settings *and* the build environment
(precision actually used, thread count, torch version, torch's CPU capability), and the bundled
tasks' models ship with the package (``selfimprove/models/base_models/<task>/``, listed with a
content digest in ``index.json``): ``builtin:<task>`` is the same model on every machine and needs
no build. ``selfimprove build-base`` still rebuilds a model from scratch and compares it with the
shipped one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from selfimprove.errors import InputError
from selfimprove.runs.io import atomic_dir, temp_dir_prefix, write_json_atomic

log = logging.getLogger(__name__)

INFO_FILE = "base_model.json"
# Bumped when the training procedure changes, so stale caches are not reused.
FORMAT_VERSION = 3


def _builder_fingerprint() -> str:
    """A hash of the tokenizer/model builder's source: a changed builder must not reuse old caches."""
    import inspect

    from selfimprove.models import tiny

    return hashlib.sha256(inspect.getsource(tiny).encode()).hexdigest()[:12]


PRECISIONS = ("fp32", "bf16", "auto")


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on a CPU with AMX tiles (torch's own check), else ``fp32``."""
    if precision != "auto":
        return precision
    import torch

    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return "bf16" if amx is not None and amx() else "fp32"
    except Exception:  # a private torch helper: never let it break a build
        return "fp32"


_MEASURE_FIELDS = frozenset({"eval_prompts", "eval_samples", "eval_temperature", "max_new_tokens"})


@dataclass(frozen=True)
class BaseModelSettings:
    """Everything that determines the base model (its hash names the cache folder)."""

    # Measured per family in benchmarks/results/base_model_search.md; RECOMMENDED holds the
    # demo's steps and slip rates.
    task: str = "arithmetic"
    level: int = 1
    # Share of the pre-training solutions that show a slipped solution instead of the right one,
    # from the step at fraction ``slip_from`` of training on (before it every solution is right:
    # the task is learnt faster from clean data, the slip rate after that).
    slip_rate: float = 0.0
    slip_from: float = 0.5
    # Train until competent: with clean_target > 0 the clean phase has no fixed length. The lr
    # stays at its peak after warm-up and every ``probe_every`` steps the greedy accuracy on
    # ``probe_prompts`` base-split problems the model is not trained on is measured; the clean
    # phase ends at the first probe reaching ``clean_target`` (or after ``max_clean_steps``), and
    # ``steps * (1 - slip_from)`` steps on the slipped corpus follow with the cosine decay. How
    # many clean steps a model needs depends on the machine's arithmetic (the step at which the
    # task "clicks" moves between CPUs), so a fixed schedule that works on one machine can stop
    # short of competence on another. 0: the fixed schedule (clean for ``slip_from`` of ``steps``).
    clean_target: float = 0.0
    probe_every: int = 250
    probe_prompts: int = 64
    max_clean_steps: int = 6000
    # torch CPU threads during the build (0: torch's choice, usually one per core). The thread
    # count changes the order of floating-point sums, hence the weights: a build is reproducible
    # for one CPU model and thread count, so the recommended builds pin it.
    threads: int = 0
    # "bf16": the build's forward and backward run under bfloat16 autocast (float32 weights and
    # optimizer) with eager attention: on a CPU with AMX a step is 1.5x faster
    # (benchmarks/results/base_model_search.md, 2026-12-03). "auto": bf16 where the CPU has AMX,
    # else fp32 (without bf16 units autocast is emulated and slow). Changes the weights.
    precision: str = "fp32"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    n_examples: int = 20000
    seed: int = 0
    # Measurement after training (held-out eval split, sampled like the demo samples).
    eval_prompts: int = 100
    eval_samples: int = 8
    eval_temperature: float = 1.0
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.slip_rate < 1.0:
            problems.append(f"slip_rate must be in [0, 1), got {self.slip_rate!r}")
        if not 0.0 <= self.slip_from <= 1.0:
            problems.append(f"slip_from must be in [0, 1], got {self.slip_from!r}")
        if self.hidden_size < 64 or self.hidden_size != 64 * self.num_heads:
            problems.append(
                f"hidden_size must be 64 x num_heads (head_dim 64), got {self.hidden_size} and {self.num_heads}"
            )
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.threads < 0:
            problems.append(f"threads must be >= 0 (0: torch's choice), got {self.threads!r}")
        if not 0.0 <= self.clean_target <= 1.0:
            problems.append(f"clean_target must be in [0, 1], got {self.clean_target!r}")
        for name in (
            "num_layers",
            "steps",
            "batch_size",
            "level",
            "probe_every",
            "probe_prompts",
            "max_clean_steps",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if problems:
            raise InputError("base-model settings: " + "; ".join(problems))

    def digest(self) -> str:
        """A short hash of the settings that determine the weights (and the procedure's version)."""
        # The measurement settings do not change the weights: a model measured differently is reused.
        weights = {k: v for k, v in asdict(self).items() if k not in _MEASURE_FIELDS}
        if is_task_file(self.task):  # a user task: its rows are part of the recipe
            weights["task_file_sha256"] = hashlib.sha256(
                Path(self.task).expanduser().read_bytes()
            ).hexdigest()
        payload = json.dumps(
            {"version": FORMAT_VERSION, "builder": _builder_fingerprint(), **weights}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseModelSettings:
        """Settings from a dict; unknown keys are an error naming them and the allowed ones."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InputError(
                f"unknown base-model setting(s) {unknown}; allowed: {', '.join(sorted(allowed))}"
            )
        return cls(**data)


def is_task_file(task: str) -> bool:
    """Whether ``task`` names a user JSONL task file rather than a bundled task."""
    return task.endswith(".jsonl") or Path(task).expanduser().is_file()


def _task_label(task: str) -> str:
    return Path(task).stem if is_task_file(task) else task


def default_cache_dir() -> Path:
    """``$SELFIMPROVE_CACHE`` or ``~/.cache/selfimprove``."""
    return Path(os.environ.get("SELFIMPROVE_CACHE") or Path.home() / ".cache" / "selfimprove").expanduser()


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here (e.g. ``AVX512``, ``AVX2``)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch: the ISA is unknown, so say so rather than guess
        return "unknown"


def build_environment(settings: BaseModelSettings) -> dict[str, Any]:
    """What besides the settings changes the weights of a build on this machine."""
    import torch

    return {
        "precision_used": resolve_precision(settings.precision),
        "threads_used": settings.threads or torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "cpu_capability": cpu_capability(),
    }


def build_key(settings: BaseModelSettings) -> str:
    """A short hash of the settings and this machine's build environment: the cache folder's key.

    Two builds with the same key give the same weights; a build with ``precision: auto`` on a CPU
    with AMX (bf16) and one without (fp32) get different keys, as do AVX2 and AVX-512 machines.
    """
    payload = json.dumps({"settings": settings.digest(), **build_environment(settings)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def default_base_dir(settings: BaseModelSettings) -> Path:
    """Where the base model for ``settings`` is cached when built on this machine."""
    return default_cache_dir() / f"base-{_task_label(settings.task)}-{build_key(settings)}"


def read_info(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``base_model.json`` of a built base model, or None when the folder holds none."""
    path = Path(model_dir) / INFO_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _encode_examples(tok: Any, demos: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per demonstration; the prompt part is masked out of the loss."""
    prompts = [
        tok.apply_chat_template(d["prompt"], add_generation_prompt=True, tokenize=False) for d in demos
    ]
    # One batched call each: per-row tokenizer calls cost more than the rest of the encoding.
    prompt_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tok([d["completion"] + tok.eos_token for d in demos], add_special_tokens=False)[
        "input_ids"
    ]
    return [(p + c, [-100] * len(p) + c) for p, c in zip(prompt_ids, completion_ids, strict=True)]


def _batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_on_demonstrations(
    model: Any,
    tok: Any,
    demos: list[dict[str, Any]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    late_demos: list[dict[str, Any]] | None = None,
    late_from: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    ready: Callable[[int], bool] | None = None,
    ready_every: int = 250,
    max_clean_steps: int | None = None,
    bf16: bool = False,
) -> list[float]:
    """Plain supervised next-token training on ``{"prompt", "completion"}`` rows; returns the losses.

    From step ``late_from`` on, row ``i`` of ``late_demos`` replaces row ``i`` of ``demos`` (same
    prompts, other completions: the slipped corpus). ``on_step(steps_done, loss)`` runs after every
    step (a callback that evaluates must put the model back in train mode). A bare torch loop (no
    Trainer) because at this size the Trainer's per-step overhead is larger than the model's compute.

    With ``ready`` the clean phase has no fixed length: after warm-up the lr stays at its peak,
    ``ready(steps_done)`` is asked every ``ready_every`` steps and the clean phase ends at the first
    True (or after ``max_clean_steps``, which is then required); ``steps - late_from`` steps on
    ``late_demos`` follow with the cosine decay. ``ready`` must leave the model in train mode.

    ``bf16``: forward and backward under CPU bfloat16 autocast (the weights and AdamW stay float32).
    """
    import torch
    from tqdm.auto import tqdm

    encoded = _encode_examples(tok, demos)
    late = None
    if late_demos is not None:
        if len(late_demos) != len(demos):
            raise ValueError(f"late_demos has {len(late_demos)} rows, demos {len(demos)}")
        late = _encode_examples(tok, late_demos)
    rng = random.Random(seed)
    order: list[int] = []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    if ready is not None and max_clean_steps is None:
        raise ValueError("ready needs max_clean_steps (the clean phase must end)")
    late_steps = steps - late_from
    # The step the clean phase ends at: fixed, or unknown until ``ready`` says so.
    clean_end: int | None = late_from if ready is None else None

    def cosine(step: int, start: int, length: int) -> float:
        t = (step - start) / max(1, length)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    def lr_at(step: int) -> float:
        # Linear warm-up, then cosine decay to 10% of the peak (over all steps, or over the
        # slipped phase when the clean phase is open-ended).
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        if ready is None:
            return cosine(step, warmup_steps, steps - warmup_steps)
        if clean_end is None:
            return lr
        return cosine(step, clean_end, late_steps)

    model.train()
    losses: list[float] = []
    total = steps if ready is None else max_clean_steps + late_steps
    bar = tqdm(total=total, desc="base model: training", disable=not progress, leave=False)
    step = 0
    while True:
        if clean_end is None and step > 0 and (step % ready_every == 0 or step >= max_clean_steps):
            if ready(step) or step >= max_clean_steps:
                clean_end = step
                bar.total = step + late_steps
                bar.refresh()
        if clean_end is not None and step >= clean_end + late_steps:
            break
        if len(order) < batch_size:
            more = list(range(len(encoded)))
            rng.shuffle(more)
            order.extend(more)
        idx, order = order[:batch_size], order[batch_size:]
        rows = late if late is not None and clean_end is not None and step >= clean_end else encoded
        batch = _batch([rows[i] for i in idx], tok.pad_token_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        step += 1
        bar.update(1)
        if on_step is not None:
            on_step(step, losses[-1])
        if step % 10 == 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", phase="clean" if clean_end is None else "slipped")
    bar.close()
    model.eval()
    return losses


def sample_completions(
    model: Any,
    tok: Any,
    prompts: list[dict[str, Any]],
    *,
    n: int,
    temperature: float,
    max_new_tokens: int,
    batch_prompts: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, list[str]]:
    """Sample ``n`` completion texts per prompt with HF generate (prompt_id -> texts)."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    texts_out: dict[str, list[str]] = {}
    tok.padding_side = "left"
    chunks = range(0, len(prompts), batch_prompts)
    for start in tqdm(chunks, desc="sampling", disable=not progress, leave=False):
        chunk = prompts[start : start + batch_prompts]
        texts = [
            tok.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=False) for p in chunk
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=1.0,
                top_k=0,
                num_return_sequences=n,
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        decoded = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, p in enumerate(chunk):
            texts_out[p["prompt_id"]] = decoded[i * n : (i + 1) * n]
    return texts_out


def sample_answers(
    model: Any, tok: Any, task: Any, prompts: list[dict[str, Any]], **sampling: Any
) -> dict[str, list[str | None]]:
    """Sample completions (see :func:`sample_completions`) and extract the task's answers."""
    texts = sample_completions(model, tok, prompts, **sampling)
    return {pid: [task.extract(t) for t in ts] for pid, ts in texts.items()}


def measure(
    model: Any,
    tok: Any,
    task: Any,
    *,
    level: int,
    n_prompts: int,
    n_samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Sampled pass@1, maj@n and pass@n on ``n_prompts`` held-out eval prompts."""
    from selfimprove.eval.metrics import evaluate_answers

    prompts, gold = task.make_split("eval", n_prompts, seed=seed, level=level)
    answers = sample_answers(
        model,
        tok,
        task,
        prompts,
        n=n_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        progress=progress,
    )
    return evaluate_answers(answers, gold, task.check, ks=(n_samples,))


def greedy_accuracy(
    model: Any, tok: Any, task: Any, prompts: list[dict[str, Any]], gold: dict[str, str], max_new_tokens: int
) -> float:
    """Share of ``prompts`` whose greedy completion's answer is right (``gold``: prompt_id -> answer)."""
    got = sample_answers(model, tok, task, prompts, n=1, temperature=0, max_new_tokens=max_new_tokens)
    return sum(task.check(got[pid][0], ans) for pid, ans in gold.items()) / max(1, len(gold))


def _probe_set(
    task: Any, s: BaseModelSettings, demos: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``s.probe_prompts`` base-split problems, those the model is not trained on first.

    Base-split gold is pre-training data (the eval split is never read here). When training uses
    the whole base split of a level (arithmetic level 1), the probes are training problems and
    measure fit rather than generalisation.
    """
    seen = {json.dumps(d["prompt"], sort_keys=True) for d in demos}
    prompts, gold = task.make_split("base", s.probe_prompts * 4, seed=s.seed + 7919, level=s.level)
    fresh = [p for p in prompts if json.dumps(p["prompt"], sort_keys=True) not in seen]
    rest = [p for p in prompts if json.dumps(p["prompt"], sort_keys=True) in seen]
    chosen = (fresh + rest)[: s.probe_prompts]
    return chosen, {p["prompt_id"]: gold[p["prompt_id"]] for p in chosen}


def _build_into(folder: Path, s: BaseModelSettings, progress: bool) -> dict[str, Any]:
    import torch

    from selfimprove.tasks import get_task

    # The embedded model sees the bundled prompts without the answer-format instruction (a user
    # task's prompts are used as written).
    task = get_task(s.task) if is_task_file(s.task) else get_task(s.task, instruction=False)
    prev_threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        return _train_and_measure(folder, s, progress, task)
    finally:
        torch.set_num_threads(prev_threads)


def _train_and_measure(folder: Path, s: BaseModelSettings, progress: bool, task: Any) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfimprove.models.tiny import build_tiny_model

    t0 = time.time()
    torch.manual_seed(s.seed)
    build_tiny_model(
        folder,
        hidden_size=s.hidden_size,
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        max_position_embeddings=512,
        seed=s.seed,
        chat_template="compact",
    )
    tok = AutoTokenizer.from_pretrained(str(folder))
    # Under bf16 autocast torch's CPU SDPA backward is slower than eager attention (measured).
    precision = resolve_precision(s.precision)
    attn = "eager" if precision == "bf16" else None
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation=attn)
    # Never more examples than the steps can use: encoding them costs time.
    n = min(s.n_examples, s.steps * s.batch_size)
    demos = task.make_demonstrations(n, seed=s.seed, level=s.level)
    slipped = (
        task.make_demonstrations(n, seed=s.seed, level=s.level, slip_rate=s.slip_rate)
        if s.slip_rate
        else None
    )
    probes: list[dict[str, Any]] = []
    ready = None
    if s.clean_target > 0:
        probe_prompts, probe_gold = _probe_set(task, s, demos)

        def ready(step: int) -> bool:
            t = time.time()
            acc = greedy_accuracy(model, tok, task, probe_prompts, probe_gold, s.max_new_tokens)
            model.train()
            probes.append({"step": step, "greedy": round(acc, 4), "seconds": round(time.time() - t, 1)})
            msg = (
                f"base model: step {step}, greedy accuracy {acc:.3f} on {len(probe_gold)} held-out "
                f"base-split problems (clean phase ends at {s.clean_target})"
            )
            if progress:
                from tqdm.auto import tqdm

                tqdm.write(msg)
            else:
                log.info(msg)
            return acc >= s.clean_target

    losses = train_on_demonstrations(
        model,
        tok,
        demos,
        steps=s.steps,
        batch_size=s.batch_size,
        lr=s.lr,
        warmup_steps=s.warmup_steps,
        weight_decay=s.weight_decay,
        seed=s.seed,
        progress=progress,
        late_demos=slipped,
        late_from=int(s.slip_from * s.steps),
        ready=ready,
        ready_every=s.probe_every,
        max_clean_steps=s.max_clean_steps,
        bf16=precision == "bf16",
    )
    train_seconds = time.time() - t0
    late_steps = s.steps - int(s.slip_from * s.steps)
    model.save_pretrained(str(folder), safe_serialization=True)
    t1 = time.time()
    # A user task without eval rows (gold) cannot be measured: the build record says so.
    has_eval = s.eval_prompts > 0 and bool(task.make_split("eval", 1, seed=s.seed, level=s.level)[1])
    metrics = (
        measure(
            model,
            tok,
            task,
            level=s.level,
            n_prompts=s.eval_prompts,
            n_samples=s.eval_samples,
            temperature=s.eval_temperature,
            max_new_tokens=s.max_new_tokens,
            seed=s.seed,
            progress=progress,
        )
        if has_eval
        else {}
    )
    tail = losses[-20:] or [float("nan")]
    return {
        "format_version": FORMAT_VERSION,
        "digest": s.digest(),
        "build_key": build_key(s),
        "environment": build_environment(s),
        "settings": asdict(s),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": sum(tail) / len(tail),
        "steps_done": len(losses),
        "clean_steps": len(losses) - late_steps,
        "probes": probes,
        "competent": (not probes) or probes[-1]["greedy"] >= s.clean_target,
        "train_seconds": round(train_seconds, 1),
        # The weights depend on these (floating-point order), not only on the settings.
        "threads_used": torch.get_num_threads(),
        "precision_used": precision,
        "cpu": cpu_name(),
        "eval_seconds": round(time.time() - t1, 1),
        "metrics": metrics,
    }


def cpu_name() -> str:
    """The CPU model name (Linux /proc/cpuinfo; else platform's), for build and benchmark records."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def remove_stale_temps(target: Path) -> None:
    """Delete temporary build folders of ``target`` left by killed builds (their process is gone)."""
    prefix = temp_dir_prefix(target)
    for tmp in target.parent.glob(f"{prefix}*"):
        try:
            pid = int(tmp.name[len(prefix) :].split("-", 1)[0])
            os.kill(pid, 0)  # still running: another build in progress, leave it alone
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def build_base_model(
    settings: BaseModelSettings | None = None,
    out: str | Path | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build (or reuse from the cache) the base model for ``settings``; returns its folder.

    A folder that already holds a base model with the same settings hash is reused unless
    ``force``. The model is built in a temporary sibling folder and renamed into place, so an
    interrupted build never leaves a half-written model where a later run would reuse it.
    """
    s = settings or BaseModelSettings()
    from selfimprove.tasks import TASKS, get_task

    if is_task_file(s.task):
        get_task(s.task).make_demonstrations(1)  # a bad file fails now (file and line), not mid-build
    elif s.task not in TASKS:
        raise InputError(
            f"build-base: unknown task {s.task!r}; bundled tasks: {', '.join(TASKS)}, or a .jsonl file "
            "with 'base' rows"
        )
    target = Path(out).expanduser() if out is not None else default_base_dir(s)
    key = build_key(s)
    info = read_info(target)
    if info is not None and info.get("build_key") == key and not force:
        log.info("reusing the base model in %s", target)
        return target
    if target.exists() and info is None and any(target.iterdir()):
        raise InputError(f"build-base: {target} exists and is not a base-model folder; choose another --out")
    if info is not None and info.get("build_key") != key and not force:
        what = (
            "other settings" if info.get("digest") != s.digest() else "the same settings on another machine"
        )
        raise InputError(
            f"build-base: {target} holds a base model built with {what} "
            f"(build key {info.get('build_key')} != {key}); pass --force to replace it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    with atomic_dir(target) as tmp:
        info = _build_into(tmp, s, progress)
        write_json_atomic(tmp / INFO_FILE, info)
    return target


# Per-task recipes of the embedded base models: the settings the shipped models were built with
# (selfimprove/models/base_models/index.json records each build's CPU and measured accuracy), and
# what `selfimprove build-base --task <task>` rebuilds. Every task: 4 layers; clean solutions at
# the peak lr until greedy accuracy on held-out base problems reaches `clean_target` (the task has
# "clicked"), then 750 steps with half the solutions slipped while the lr anneals. float32 on one
# thread: a bf16 build depends on the CPU having bf16 units, and the step at which a task clicks
# moves with the arithmetic anyway (AMX vs AVX-512 vs AVX2, thread count), so the seed of each
# recipe is the one whose fp32 build clicked on the machine the shipped model was built on
# (benchmarks/results/base_model_search.md). On another CPU a rebuild follows another trajectory
# and may click later or never; `builtin:<task>` uses the shipped model and never rebuilds.
_CLICK_RECIPE: dict[str, Any] = {
    "num_layers": 4,
    "steps": 3000,  # with a clean target, steps * (1 - slip_from) = 750 slipped steps follow
    "slip_rate": 0.5,
    "slip_from": 0.75,
    "threads": 1,
    "precision": "fp32",
}
RECOMMENDED: dict[str, dict[str, Any]] = {
    "counting": {**_CLICK_RECIPE, "clean_target": 0.75, "max_clean_steps": 6000},
    "arithmetic": {**_CLICK_RECIPE, "clean_target": 0.5, "max_clean_steps": 3000},
    "sorting": {**_CLICK_RECIPE, "clean_target": 0.75, "max_clean_steps": 6000},
    "string_ops": {**_CLICK_RECIPE, "clean_target": 0.5, "max_clean_steps": 4000, "seed": 1},
}


# A user JSONL task: the same recipe, trained until greedy accuracy 0.5 on held-out base rows.
USER_TASK_RECIPE: dict[str, Any] = {**_CLICK_RECIPE, "clean_target": 0.5, "max_clean_steps": 4000}


def recommended_settings(task: str = "counting", **overrides: Any) -> BaseModelSettings:
    """The base-model settings for ``task`` (``RECOMMENDED``, or ``USER_TASK_RECIPE`` for a JSONL file)."""
    recipe = USER_TASK_RECIPE if is_task_file(task) else RECOMMENDED.get(task, {})
    return BaseModelSettings.from_dict({"task": task, **recipe, **overrides})


def check_competent(model_dir: str | Path) -> None:
    """Raise when ``model_dir`` holds a base model whose build never became competent.

    A build whose clean phase ended at its step cap without reaching ``clean_target`` is not a
    usable base model: its majority vote knows too little for label-free training to show
    anything. Folders without ``base_model.json`` (any other model) pass.
    """
    info = read_info(model_dir)
    if info is None or info.get("competent") is not False:
        return
    s = info.get("settings") or {}
    probes = info.get("probes") or [{}]
    raise InputError(
        f"{model_dir} is not a usable base model: its greedy accuracy on held-out base-split "
        f"problems stayed at {probes[-1].get('greedy')} (< clean_target {s.get('clean_target')}) "
        f"after {info.get('clean_steps')} clean steps; rebuild it with more steps "
        "(`selfimprove build-base --max-clean-steps ...`) or use the shipped model (`builtin:<task>`)"
    )


def ensure_base_model(
    task: str = "counting",
    *,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Build the recommended base model for ``task`` or reuse the cached one; returns its folder.

    Raises :class:`InputError` when the build did not become competent (see :func:`check_competent`).
    """
    path = build_base_model(recommended_settings(task, **overrides), out, force=force, progress=progress)
    check_competent(path)
    return path


# ---------------------------------------------------------------------------------------------
# Shipped base models: the bundled tasks' models inside the package, the same on every machine
# ---------------------------------------------------------------------------------------------

SHIPPED_DIR = Path(__file__).resolve().parent / "base_models"
SHIPPED_INDEX = "index.json"
# The files that make the model; base_model.json (the build record) is not part of its identity.
MODEL_FILES = (
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def content_digest(folder: str | Path) -> str:
    """SHA-256 over the model's files (names and bytes, in a fixed order): what the model *is*."""
    h = hashlib.sha256()
    for name in MODEL_FILES:
        path = Path(folder) / name
        if not path.is_file():
            raise InputError(
                f"{folder}: {name} is missing (a base-model folder holds {', '.join(MODEL_FILES)})"
            )
        h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def shipped_index(root: str | Path = SHIPPED_DIR) -> dict[str, Any]:
    """``index.json`` of the shipped base models (task -> content digest and build summary)."""
    path = Path(root) / SHIPPED_INDEX
    return json.loads(path.read_text()) if path.is_file() else {}


def shipped_base_model(task: str, root: str | Path = SHIPPED_DIR) -> Path | None:
    """The shipped model folder of ``task`` after checking its content digest; None if none ships.

    A folder whose files do not match the digest recorded in ``index.json`` is an error (a damaged
    or hand-edited install), never silently used.
    """
    entry = shipped_index(root).get(task)
    if entry is None:
        return None
    folder = Path(root) / task
    got = content_digest(folder)
    if got != entry["content_digest"]:
        raise InputError(
            f"the shipped base model of {task!r} in {folder} does not match its recorded digest "
            f"({got[:12]} != {entry['content_digest'][:12]}): the install is damaged; reinstall "
            f"selfimprove, or build one with `selfimprove build-base --task {task}`"
        )
    return folder


def ship_base_model(model_dir: str | Path, root: str | Path = SHIPPED_DIR) -> Path:
    """Copy a built, competent base model into the package's shipped models and record its digest.

    For maintainers (``selfimprove build-base --ship``); a user's own builds live in the cache.
    """
    info = read_info(model_dir)
    if info is None:
        raise InputError(f"{model_dir} is not a base-model folder (no {INFO_FILE})")
    check_competent(model_dir)
    task = info["settings"]["task"]
    root = Path(root)
    dest = root / task
    with atomic_dir(dest) as tmp:
        for name in (*MODEL_FILES, INFO_FILE):
            shutil.copyfile(Path(model_dir) / name, tmp / name)
    index = shipped_index(root)
    m = info.get("metrics") or {}
    index[task] = {
        "content_digest": content_digest(dest),
        "settings_digest": info["digest"],
        "build_key": info.get("build_key"),
        "environment": info.get("environment"),
        "cpu": info.get("cpu"),
        "metrics": {k: m[k] for k in sorted(m) if k.startswith(("pass@", "maj@"))},
    }
    write_json_atomic(root / SHIPPED_INDEX, dict(sorted(index.items())))
    return dest


def builtin_model(task: str, *, progress: bool = True) -> Path:
    """The model behind ``builtin:<task>``: the shipped one, else the recommended build (cached).

    The bundled tasks ship their models, so this is a digest check, not a build; a task without a
    shipped model is built once on this machine (minutes) and must become competent.
    """
    from selfimprove.tasks import TASKS

    if task not in TASKS:
        raise InputError(f"builtin:{task}: unknown task; bundled tasks: {', '.join(TASKS)}")
    shipped = shipped_base_model(task)
    if shipped is not None:
        return shipped
    return ensure_base_model(task, progress=progress)
