"""selfimprove.evaluate: a model on a task's eval split, scored against gold (real HF generator)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.eval import evaluate, label_accuracy, reward_accuracy


def exact(pred, gold):
    return pred is not None and pred == gold


@pytest.mark.parametrize(
    ("pseudo", "gold", "expected"),
    [
        ({"a": "1", "b": "2"}, {"a": "1", "b": "3"}, 0.5),
        ({"a": "1", "b": None}, {"a": "1", "b": "3"}, 1.0),  # an abstained vote is left out
        ({"a": "1", "c": "2"}, {"a": "2"}, 0.0),  # a prompt without gold is left out
        ({"a": None}, {"a": "1"}, None),
    ],
)
def test_label_accuracy(pseudo, gold, expected):
    assert label_accuracy(pseudo, gold, exact) == expected


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([("a", 1.0, "1"), ("a", 0.0, "2"), ("a", 1.0, "2"), ("a", 0.0, "1")], 0.5),
        ([("a", 0.5, "1"), ("a", -1.0, "2"), ("a", None, "1"), ("z", 1.0, "9")], 1.0),  # None, no gold: out
        ([("a", None, "1")], None),
    ],
)
def test_reward_accuracy(samples, expected):
    assert reward_accuracy(samples, {"a": "1"}, exact) == expected


@pytest.mark.slow
def test_evaluate_scores_the_eval_split_against_gold(tmp_path, tiny_model_dir):
    from selfimprove.generate import build_generator
    from selfimprove.generate.base import Sampling
    from selfimprove.tasks import get_task

    path = tmp_path / "task.jsonl"
    rows = [
        {
            "id": f"q{i}",
            "prompt": f"Item {i}.",
            "answer": "abcde"[i % 5],
            "split": "eval" if i % 2 else "train",
        }
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task(str(path), extractor="regex", extractor_options={"pattern": "([a-e])", "which": "first"})
    gen = build_generator("hf", str(tiny_model_dir))
    try:
        sampling = Sampling(n=4, temperature=1.0, max_tokens=8, seed=0)
        m = evaluate(gen, task, sampling, out_dir=tmp_path / "eval")
        again = evaluate(gen, task, sampling, out_dir=tmp_path / "eval")  # stored: resumed, not resampled
    finally:
        gen.close()
    assert m == again
    stored = [json.loads(line) for line in (tmp_path / "eval" / "rollouts.jsonl").read_text().splitlines()]
    gold = {r["id"]: r["answer"] for r in rows if r["split"] == "eval"}
    assert len(stored) == 4 * len(gold) and {x["prompt_id"] for x in stored} == set(gold)
    # Recomputed by hand from the stored completions.
    by_prompt: dict[str, list[bool]] = {}
    for x in stored:
        by_prompt.setdefault(x["prompt_id"], []).append(task.extract(x["completion"]) == gold[x["prompt_id"]])
    assert m["pass@1"] == pytest.approx(sum(sum(c) / len(c) for c in by_prompt.values()) / len(by_prompt))
    assert m["pass@4"] == pytest.approx(sum(any(c) for c in by_prompt.values()) / len(by_prompt))
    assert m["constant_baseline"] == pytest.approx(
        max(list(gold.values()).count(a) for a in "abcde") / len(gold)
    )
    assert {"maj@1", "maj@4", "answer_rate", "majority_ratio", "answer_entropy"} <= set(m)
    assert m["n_prompts"] == len(gold) and m["n_samples"] == 4 * len(gold)


def test_evaluate_refuses_an_empty_eval_split(tmp_path):
    from selfimprove.errors import InputError
    from selfimprove.generate.base import Sampling
    from selfimprove.tasks import get_task

    path = Path(tmp_path / "task.jsonl")
    path.write_text(json.dumps({"prompt": "Say 1.", "answer": "1", "split": "train"}) + "\n")
    with pytest.raises(InputError, match="eval split is empty"):
        evaluate(None, get_task(str(path)), Sampling(n=1))
