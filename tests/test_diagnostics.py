"""score_rollouts (Scored rollout records) and diagnostics, with and without gold."""

from __future__ import annotations

import math

import pytest

from selfimprove.errors import InputError, LabelLeakError
from selfimprove.score.diagnostics import compute_diagnostics
from selfimprove.score.rewards import get_reward
from selfimprove.score.rollouts import score_rollouts

SCORED_FIELDS = {
    "extracted",
    "reward",
    "rewards",
    "pseudo_label",
    "vote_share",
    "majority_ratio",
    "n_distinct",
}


def rollout(pid, idx, completion, finish="stop", tokens=3, meta=None):
    return {
        "prompt_id": pid,
        "prompt": f"question {pid}",
        "sample_index": idx,
        "completion": completion,
        "finish_reason": finish,
        "prompt_tokens": 5,
        "completion_tokens": tokens,
        "model": "m",
        "adapter": None,
        "adapter_version": None,
        "backend": "hf",
        "meta": meta or {},
    }


def sample_rollouts():
    return [
        rollout("p1", 0, "so 4"),
        rollout("p1", 1, "it is 4"),
        rollout("p1", 2, "maybe 5"),
        rollout("p1", 3, "", tokens=0),
        rollout("p2", 0, "x = 7"),
        rollout("p2", 1, "x = 7"),
        rollout("p3", 0, "no idea", finish="length", tokens=64),
        rollout("p3", 1, "unknown", finish="error", tokens=0),
    ]


def test_score_rollouts_fields_and_values():
    rolls = sample_rollouts()
    before = [dict(r) for r in rolls]
    scored = score_rollouts(rolls, "last_number")
    assert rolls == before  # inputs untouched
    for rec, orig in zip(scored, rolls, strict=True):
        assert set(rec) == set(orig) | SCORED_FIELDS
    assert [r["extracted"] for r in scored] == ["4", "4", "5", None, "7", "7", None, None]
    assert [r["pseudo_label"] for r in scored] == ["4"] * 4 + ["7"] * 2 + [None] * 2
    assert [r["vote_share"] for r in scored] == [0.5, 0.5, 0.25, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert [r["majority_ratio"] for r in scored] == [0.5] * 4 + [1.0] * 2 + [0.0] * 2
    assert [r["n_distinct"] for r in scored] == [2] * 4 + [1] * 2 + [0] * 2
    assert [r["reward"] for r in scored] == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert scored[0]["rewards"] == {"majority_vote": 1.0}


def test_score_rollouts_with_weighted_terms_and_judge():
    rolls = sample_rollouts()[:3]
    mv = get_reward("majority_vote")
    ln = get_reward("length", max_length=4)
    scored = score_rollouts(rolls, "last_number", [(mv, 1.0), (ln, 2.0)], judge_scores=[3.0, None, 1.0])
    assert [r["rewards"] for r in scored] == [
        {"majority_vote": 1.0, "length": 0.0},
        {"majority_vote": 1.0, "length": -0.75},
        {"majority_vote": 0.0, "length": -0.75},
    ]
    assert [r["reward"] for r in scored] == [1.0, 1.0 - 1.5, -1.5]
    assert [r["judge_score"] for r in scored] == [3.0, None, 1.0]
    with pytest.raises(InputError, match="unique"):
        score_rollouts(rolls, "last_number", [mv, mv])


def test_score_rollouts_rejects_gold_in_meta_and_bad_records():
    rolls = [rollout("p", 0, "1", meta={"answer": "1"})]
    with pytest.raises(LabelLeakError, match="answer"):
        score_rollouts(rolls)
    with pytest.raises(LabelLeakError, match="gold"):
        score_rollouts([{**rollout("p", 0, "1"), "gold": "1"}])
    with pytest.raises(InputError, match="rollout 0: missing field 'completion'"):
        score_rollouts([{"prompt_id": "p"}])
    with pytest.raises(InputError, match="judge_scores"):
        score_rollouts(sample_rollouts(), judge_scores=[1.0])
    assert score_rollouts([]) == []


def test_meta_columns_reach_rewards():
    rolls = [rollout("p", i, c, meta={"paraphrase_label": "3"}) for i, c in enumerate(["3", "4"])]
    co = get_reward("paraphrase_agreement")
    scored = score_rollouts(rolls, "last_number", [co])
    assert [r["reward"] for r in scored] == [1.0, 0.0]


def test_diagnostics_label_free():
    d = compute_diagnostics(score_rollouts(sample_rollouts()))
    assert d["n_samples"] == 8 and d["n_prompts"] == 3
    assert d["majority_ratio"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    h1 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert d["answer_entropy"] == pytest.approx(h1 / 3)
    assert d["n_distinct"] == pytest.approx(1.0)
    assert d["no_answer_rate"] == pytest.approx(3 / 8)
    assert d["no_answer_reasons"] == {"empty": 1, "truncated": 1, "generation_error": 1}
    assert d["abstain_rate"] == pytest.approx(1 / 3)
    assert d["zero_signal_prompt_rate"] == pytest.approx(2 / 3)  # p2 all agree, p3 all zero
    assert d["reward"]["mean"] == pytest.approx(4 / 8)
    assert d["rewards"]["majority_vote"]["n"] == 8
    assert d["response_length_tokens"] == pytest.approx((3 * 5 + 0 + 64 + 0) / 8)
    # the loop's round metrics come from the same group statistics (group_diagnostics)
    assert d["truncated_no_answer_rate"] == pytest.approx(1 / 8)
    assert d["answer_diversity"] == pytest.approx(2 / 3)  # p1 -> 4, p2 -> 7, p3 has no answer
    assert "label_accuracy" not in d


def test_diagnostics_with_gold_for_evaluation():
    scored = score_rollouts(sample_rollouts())
    d = compute_diagnostics(scored, gold={"p1": "5", "p2": "7", "p3": "1"})
    # voted prompts p1 (label 4, gold 5: wrong) and p2 (7: right)
    assert d["label_accuracy"] == pytest.approx(0.5)
    # reward positive exactly when correct (the loop's train/reward_accuracy, same definition):
    # p1: samples 4,4 rewarded but wrong; 5 unrewarded but right; None unrewarded and wrong -> 1/4
    # p2: both rewarded and right -> 2/2; p3 (abstained): both unrewarded and wrong -> 2/2
    assert d["reward_accuracy"] == pytest.approx(5 / 8)
    assert d["sample_accuracy"] == pytest.approx(3 / 8)
    assert d["gold_missing_prompts"] == 0
    assert compute_diagnostics([])["n_samples"] == 0


def test_warns_when_online_vote_options_differ(caplog):
    rolls = sample_rollouts()[:4]
    mv = get_reward("majority_vote")  # min_share 0
    with caplog.at_level("WARNING"):
        scored = score_rollouts(rolls, "last_number", [mv], min_share=0.9)
    assert "may disagree" in caplog.text
    # the vote abstained (0.5 < 0.9) but the online reward still rewarded the majority
    assert scored[0]["pseudo_label"] is None and scored[0]["reward"] == 1.0
    caplog.clear()
    with caplog.at_level("WARNING"):
        score_rollouts(rolls, "last_number", [get_reward("majority_vote", min_share=0.9)], min_share=0.9)
    assert "may disagree" not in caplog.text
