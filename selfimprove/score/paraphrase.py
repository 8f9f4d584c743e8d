"""Co-Reward's paraphrase side: rewrite each train question once, then vote on the rewrites' answers.

The loop samples the policy on the paraphrased questions every round (with the round's adapter)
and hands each prompt's voted answer to the ``paraphrase_agreement`` reward as the
``paraphrase_label`` column. The rewrites are made once and cached, so every round votes on the
same questions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.runs.io import read_jsonl, write_jsonl_atomic
from selfimprove.score.judging import prompt_text


def paraphrased_prompts(
    prompts: Sequence[Mapping[str, Any]],
    cache: str | Path,
    writer: Callable[[], Any],
    *,
    template: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Prompt records (``prompt_id``, a one-message chat ``prompt``) of the paraphrases of ``prompts``.

    The rewrites are read from ``cache`` (a JSONL of ``prompt_id``/``paraphrase``) or, the first
    time, made by ``writer()`` (a callable returning ``(generator, close)``: the generator that
    rewrites, and what to call when done) and written there atomically. Prompts whose rewrite was
    rejected (it dropped or changed a number) are left out: they abstain.
    """
    from selfimprove.score.rewards import make_paraphrases

    cache = Path(cache)
    if not cache.exists():
        questions = [prompt_text(p["prompt"]) for p in prompts]
        generator, close = writer()
        try:
            rewrites = make_paraphrases(generator, questions, template)
        finally:
            close()
        if log is not None:
            made = sum(t is not None for t in rewrites)
            log(f"co-reward: {made}/{len(questions)} paraphrases kept (prompts without one abstain)")
        rows = [
            {"prompt_id": p["prompt_id"], "paraphrase": t} for p, t in zip(prompts, rewrites, strict=True)
        ]
        write_jsonl_atomic(cache, rows)
    by_id = {x["prompt_id"]: x["paraphrase"] for x in read_jsonl(cache)}
    return [
        {
            "prompt_id": p["prompt_id"],
            "prompt": [{"role": "user", "content": by_id[p["prompt_id"]]}],
            "meta": {},
        }
        for p in prompts
        if by_id.get(p["prompt_id"])
    ]


def voted_labels(
    records: Sequence[Mapping[str, Any]], extract: Callable[[str], str | None]
) -> dict[str, str | None]:
    """Each prompt's majority-voted answer over its rollout records (None where the vote abstains)."""
    from selfimprove.score.vote import majority_vote

    answers: dict[str, list[str | None]] = {}
    for x in records:
        answers.setdefault(str(x["prompt_id"]), []).append(extract(x["completion"]))
    return {pid: majority_vote(a).pseudo_label for pid, a in answers.items()}
