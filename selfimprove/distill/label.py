"""Teacher labelling: k samples per unlabeled input, the voted label, its confidence.

Every sample's answer is read by the task's extractor; the label is the majority vote
(:func:`selfimprove.score.vote.majority_vote`), the confidence is its vote share and, where the
backend returned log-probabilities, the mean probability of the label's tokens over the samples
that gave it. Samples are appended to ``rollouts.jsonl`` batch by batch (whole groups, fsync), so
a killed run resumes without asking the teacher again for what it already answered. Nothing here
reads gold answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selfimprove.generate.base import Completion, Generator, Sampling
from selfimprove.generate.store import RolloutStore
from selfimprove.score.vote import majority_vote


def answer_span(text: str, answer: str | None) -> tuple[int, int] | None:
    """Character span of the last occurrence of ``answer`` in ``text`` (None when absent)."""
    if not answer:
        return None
    i = text.rfind(answer)
    return None if i < 0 else (i, i + len(answer))


def token_ends(tokenizer: Any, token_ids: Sequence[int]) -> list[int]:
    """Character offset in the decoded text where each token ends (decoding growing prefixes)."""
    return [
        len(tokenizer.decode(list(token_ids[: i + 1]), skip_special_tokens=True))
        for i in range(len(token_ids))
    ]


def span_logprob(tokenizer: Any, completion: Completion, span: tuple[int, int] | None) -> float | None:
    """Sum of the log-probabilities of the sampled tokens that overlap ``span`` (None if unknown).

    Needs the completion's token ids and per-token log-probabilities, and a decoded text that
    matches ``completion.text`` (else the offsets would be wrong and None is returned).
    """
    if span is None or tokenizer is None or not completion.token_ids or not completion.token_logprobs:
        return None
    ids = completion.token_ids[: len(completion.token_logprobs)]
    ends = token_ends(tokenizer, ids)
    decoded = tokenizer.decode(list(ids), skip_special_tokens=True)
    if not decoded.startswith(completion.text):
        return None
    total, start, hit = 0.0, 0, False
    for end, lp in zip(ends, completion.token_logprobs, strict=False):
        if end > span[0] and start < span[1]:
            if lp is None or math.isnan(lp):
                return None
            total += lp
            hit = True
        start = end
        if start >= span[1]:
            break
    return total if hit else None


def sample_records(
    generator: Generator,
    batch: Sequence[dict[str, Any]],
    groups: Sequence[Sequence[Completion]],
    extract: Callable[[str], str | None],
    adapter: str | None,
) -> list[dict[str, Any]]:
    """Rollout records of one batch: each sample's text, extracted answer and answer log-probability."""
    tokenizer = getattr(generator, "tokenizer", None)
    out = []
    for rec, group in zip(batch, groups, strict=True):
        for k, c in enumerate(group):
            answer = extract(c.text) if c.finish_reason != "error" else None
            span = answer_span(c.text, answer)
            out.append(
                {
                    "prompt_id": rec["prompt_id"],
                    "prompt": rec["prompt"],
                    "sample_index": k,
                    "completion": c.text,
                    "finish_reason": c.finish_reason,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "answer": answer,
                    "answer_span": list(span) if span else None,
                    "answer_logprob": span_logprob(tokenizer, c, span),
                    "model": getattr(generator, "model", None),
                    "backend": getattr(generator, "backend", None),
                    "adapter": adapter,
                    "meta": rec.get("meta", {}),
                }
            )
    return out


def sample_teacher(
    generator: Generator,
    inputs: Sequence[dict[str, Any]],
    sampling: Sampling,
    store: RolloutStore,
    extract: Callable[[str], str | None],
    *,
    adapter: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample ``sampling.n`` teacher completions per input into ``store``, skipping finished inputs."""
    from tqdm.auto import tqdm

    done = store.completed(sampling.n)
    todo = [rec for rec in inputs if rec["prompt_id"] not in done]
    with tqdm(
        total=len(inputs), initial=len(inputs) - len(todo), desc="teacher", disable=not progress
    ) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            groups = generator.generate([r["prompt"] for r in batch], sampling, adapter=adapter)
            if len(groups) != len(batch):
                raise RuntimeError(
                    f"the teacher's backend returned {len(groups)} groups for {len(batch)} inputs"
                )
            store.append(sample_records(generator, batch, groups, extract, adapter))
            bar.update(len(batch))
    wanted = {r["prompt_id"] for r in inputs}
    return [r for r in store.records() if r["prompt_id"] in wanted]


def label_groups(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One labelled input per prompt (first-seen order): the voted label and its confidences.

    ``teacher_label`` is None when no sample gave an answer (``reason`` says why). ``completion`` is the
    first sample that gave the label (the teacher's worked answer), ``label_prob`` the mean over
    the agreeing samples of exp(log-probability of the label's tokens), None when unknown.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(str(r["prompt_id"]), []).append(r)
    out = []
    for pid, recs in groups.items():
        recs = sorted(recs, key=lambda r: r.get("sample_index", 0))
        vote = majority_vote([r["answer"] for r in recs])
        label = vote.pseudo_label
        agreeing = [r for i, r in enumerate(recs) if vote.agrees(i)]
        probs = [math.exp(r["answer_logprob"]) for r in agreeing if r.get("answer_logprob") is not None]
        first = agreeing[0] if agreeing else None
        out.append(
            {
                "prompt_id": pid,
                "prompt": recs[0]["prompt"],
                "teacher_label": label,
                "reason": vote.reason,
                "vote_share": vote.majority_ratio if label is not None else 0.0,
                "label_prob": sum(probs) / len(probs) if probs and len(probs) == len(agreeing) else None,
                "n_valid": vote.n_valid,
                "k": vote.n_total,
                "n_distinct": vote.n_distinct,
                "completion": first["completion"] if first else None,
                "completion_span": first.get("answer_span") if first else None,
                "meta": recs[0].get("meta", {}),
            }
        )
    return out


def write_label_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> int:
    """Write the labelled inputs atomically (``labels.jsonl``)."""
    from selfimprove.runs.io import write_jsonl_atomic

    return write_jsonl_atomic(path, rows)


__all__ = [
    "answer_span",
    "label_groups",
    "sample_records",
    "sample_teacher",
    "span_logprob",
    "token_ends",
    "write_label_rows",
]
