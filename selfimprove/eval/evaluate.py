"""Evaluate a model on a task: sample the eval split, extract answers, score them against gold.

``evaluate(generator, task, sampling)`` is the whole job in one call (any backend, any task, an
optional LoRA adapter); ``eval_metrics(records, gold, extract, check)`` is the scoring half, which
the self-training loop runs on the rollouts it stored itself (so an interrupted evaluation
resumes). Gold answers are read here and only here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.eval.metrics import evaluate_answers


def group_by_prompt(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rollout records grouped by ``prompt_id`` (first-seen order), each group sorted by ``sample_index``."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        groups.setdefault(str(rec["prompt_id"]), []).append(rec)
    for recs in groups.values():
        recs.sort(key=lambda r: r.get("sample_index", 0))
    return groups


def eval_metrics(
    records: Sequence[Mapping[str, Any]],
    gold: Mapping[str, str],
    extract: Callable[[str], str | None],
    check: Callable[[str | None, str], bool],
    *,
    ks: Sequence[int] = (1,),
) -> dict[str, float]:
    """pass@1, maj@k, pass@k, answer rate, the constant baseline and label-free group statistics.

    ``records``: rollout records (``prompt_id``, ``sample_index``, ``completion``). Accuracies are
    over the prompts that have gold; a k larger than the fewest samples of such a prompt is left out.
    Empty ``records`` give an empty dict.
    """
    from selfimprove.score.diagnostics import group_diagnostics

    if not records:
        return {}
    groups = group_by_prompt(records)
    answers = {pid: [extract(x["completion"]) for x in recs] for pid, recs in groups.items()}
    out: dict[str, float] = {}
    with_gold = {pid: a for pid, a in answers.items() if pid in gold}
    if with_gold:
        usable = [k for k in ks if k <= min(len(a) for a in with_gold.values())]
        out.update(evaluate_answers(with_gold, gold, check, ks=usable))
    out.update(group_diagnostics(groups, answers))
    return out


def evaluate(
    generator: Any,
    task: Any,
    sampling: Any,
    adapter: str | Path | None = None,
    *,
    ks: Sequence[int] | None = None,
    n_prompts: int | None = None,
    seed: int = 0,
    level: int | None = None,
    extract: Callable[[str], str | None] | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """Sample ``sampling.n`` completions per prompt of ``task``'s eval split and score them against gold.

    ``generator``: any :class:`selfimprove.generate.Generator` (``build_generator(...)``); ``task``: a
    :class:`selfimprove.tasks.Task` (``get_task(...)``); ``adapter``: a LoRA adapter folder to serve.
    ``ks`` defaults to ``(1, sampling.n)``; ``extract`` to the task's own extractor. With ``out_dir``
    the rollouts are stored there (``rollouts.jsonl``) and a second call resumes instead of
    sampling again. Returns the metrics of :func:`eval_metrics`.
    """
    from selfimprove.generate._common import adapter_fingerprint
    from selfimprove.generate.store import RolloutStore, generate_rollouts

    prompts, gold = task.make_split("eval", n=n_prompts, seed=seed, level=level)
    if not prompts:
        from selfimprove.errors import InputError

        raise InputError(f"task {getattr(task, 'name', '?')}: the eval split is empty")
    if out_dir is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="selfimprove-eval-") as tmp:
            return evaluate(
                generator, task, sampling, adapter, ks=ks, n_prompts=n_prompts, seed=seed, level=level,
                extract=extract, out_dir=tmp, batch_size=batch_size, progress=progress,
            )  # fmt: skip
    records = generate_rollouts(
        generator,
        prompts,
        sampling,
        RolloutStore(Path(out_dir)),
        adapter=str(adapter) if adapter is not None else None,
        adapter_version=adapter_fingerprint(str(adapter)) if adapter is not None else None,
        batch_size=batch_size,
        progress=progress,
    )
    ks = tuple(ks) if ks is not None else tuple(sorted({1, int(sampling.n)}))
    return eval_metrics(records, gold, extract or task.extract, task.check, ks=ks)
