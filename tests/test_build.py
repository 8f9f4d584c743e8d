"""Data builders as tables: scored rollouts in, rows/pairs/prompts and drop counts out."""

from __future__ import annotations

import copy

import pytest

from selfimprove.data.build import build_dpo_pairs, build_grpo_prompts, build_sft_rows
from selfimprove.errors import ConfigError, InputError, LabelLeakError


def rec(pid, i, completion, extracted, *, label="4", share=None, ratio=None, judge=None, reward=None, **kw):
    """A scored rollout record (docs/DESIGN.md) with the group fields filled in."""
    out = {
        "prompt_id": pid,
        "prompt": f"Q{pid}",
        "sample_index": i,
        "completion": completion,
        "finish_reason": kw.pop("finish_reason", "stop"),
        "extracted": extracted,
        "reward": reward,
        "rewards": kw.pop("rewards", {}),
        "pseudo_label": label,
        "vote_share": share,
        "majority_ratio": ratio,
        "judge_score": judge,
        "meta": kw.pop("meta", {}),
    }
    out.update(kw)
    return out


# Prompt a: 3 of 4 say "4" (one duplicate text), one says "5". Prompt b: unanimous "7".
# Prompt c: the vote abstained. Prompt d: 2 of 4 agree, one truncated, one without an answer.
SCORED = [
    rec("a", 0, "so 4", "4", share=0.75, ratio=0.75),
    rec("a", 1, "so 4", "4", share=0.75, ratio=0.75),
    rec("a", 2, "it is 4", "4", share=0.75, ratio=0.75),
    rec("a", 3, "5!", "5", share=0.25, ratio=0.75),
    rec("b", 0, "7", "7", label="7", share=1.0, ratio=1.0),
    rec("b", 1, "seven: 7", "7", label="7", share=1.0, ratio=1.0),
    rec("c", 0, "x", None, label=None, share=None, ratio=0.0),
    rec("d", 0, "2", "2", label="2", share=0.5, ratio=0.5),
    rec("d", 1, "two 2", "2", label="2", share=0.5, ratio=0.5, finish_reason="length"),
    rec("d", 2, "3", "3", label="2", share=0.25, ratio=0.5),
    rec("d", 3, "hmm", None, label="2", share=0.0, ratio=0.5),
]


@pytest.mark.parametrize(
    "kwargs, completions, dropped",
    [
        (
            {},
            ["so 4", "it is 4", "7", "seven: 7", "2"],
            {
                "duplicate": 1,
                "disagrees_with_majority": 2,
                "no_pseudo_label": 1,
                "truncated": 1,
                "no_answer": 1,
            },
        ),
        (
            {"dedupe": False},
            ["so 4", "so 4", "it is 4", "7", "seven: 7", "2"],
            {"disagrees_with_majority": 2},
        ),
        ({"max_per_prompt": 1}, ["so 4", "7", "2"], {"over_max_per_prompt": 2, "duplicate": 1}),
        ({"min_majority_ratio": 0.7}, ["so 4", "it is 4", "7", "seven: 7"], {"below_majority_ratio": 5}),
        ({"min_majority_ratio": 1.0}, ["7", "seven: 7"], {"below_majority_ratio": 9}),
        ({"drop_truncated": False}, ["so 4", "it is 4", "7", "seven: 7", "2", "two 2"], {"duplicate": 1}),
    ],
)
def test_sft_majority_table(kwargs, completions, dropped):
    before = copy.deepcopy(SCORED)
    rows, stats = build_sft_rows(SCORED, **kwargs)
    assert [r["completion"] for r in rows] == completions
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    for reason, count in dropped.items():
        assert stats.dropped[reason] == count, (reason, stats.summary())
    assert stats.kept == len(rows)
    assert SCORED == before  # builders never mutate their input


def test_sft_judge_reward_verifier():
    data = [
        rec("a", 0, "A0", "1", judge=3.0, reward=0.0, rewards={"verifier": 1.0}),
        rec("a", 1, "A1", "1", judge=5.0, reward=1.0, rewards={"verifier": 0.0}),
        rec("a", 2, "A2", "1", judge=5.0, reward=0.5, rewards={}),
        rec("b", 0, "B0", "1", judge=None, reward=None, rewards={"verifier": 1.0}),
    ]
    rows, stats = build_sft_rows(data, select="judge")
    assert [r["completion"] for r in rows] == ["A1", "A2"]
    assert stats.dropped["not_best"] == 1 and stats.dropped["no_judge_score"] == 1
    rows, _ = build_sft_rows(data, select="judge", min_score=6.0)
    assert rows == []
    rows, _ = build_sft_rows(data, select="reward")
    assert [r["completion"] for r in rows] == ["A1"]
    rows, stats = build_sft_rows(data, select="verifier")
    assert [r["completion"] for r in rows] == ["A0", "B0"]
    assert stats.dropped["failed_verifier"] == 1 and stats.dropped["no_verifier_score"] == 1


def test_sft_chat_prompt_gives_chat_completion():
    msgs = [{"role": "user", "content": "2+2?"}]
    rows, _ = build_sft_rows([rec("a", 0, "4", "4", prompt=msgs)])
    assert rows == [{"prompt": msgs, "completion": [{"role": "assistant", "content": "4"}]}]


def test_sft_empty_and_bad_input():
    rows, stats = build_sft_rows([])
    assert rows == [] and stats.empty and "no input records" in stats.why_empty()
    with pytest.raises(ConfigError, match="select must be one of"):
        build_sft_rows(SCORED, select="best")
    bad = [rec("a", 0, "x", "x")]
    del bad[0]["completion"]
    with pytest.raises(InputError, match=r"record 0 .*missing field\(s\) \['completion'\]"):
        build_sft_rows(bad)
    with pytest.raises(LabelLeakError, match="answer"):
        build_sft_rows([rec("a", 0, "x", "x", answer="4")])
    with pytest.raises(LabelLeakError, match="gold"):
        build_sft_rows([rec("a", 0, "x", "x", meta={"gold": "4"})])


@pytest.mark.parametrize(
    "kwargs, expected, dropped",
    [
        (
            {},
            [("so 4", "5!", 0.5), ("2", "3", 0.25)],
            {"no_minority_answer": 1, "no_pseudo_label": 1, "truncated": 1},
        ),
        ({"min_margin": 0.3}, [("so 4", "5!", 0.5)], {"below_margin": 1}),
        ({"degree": None}, [("so 4", "5!", None), ("2", "3", None)], {}),
    ],
)
def test_dpo_majority_vs_minority_table(kwargs, expected, dropped):
    pairs, stats = build_dpo_pairs(SCORED, **kwargs)
    got = [(p["chosen"], p["rejected"], p.get("degree")) for p in pairs]
    assert got == [(c, r, pytest.approx(d) if d is not None else None) for c, r, d in expected]
    for reason, count in dropped.items():
        assert stats.dropped[reason] == count, (reason, stats.summary())


def test_dpo_max_pairs_and_unanimous():
    data = [rec("a", i, f"m{i}", "4", share=0.5) for i in range(3)] + [
        rec("a", 3, "n1", "5", share=0.25),
        rec("a", 4, "n2", "6", share=0.25),
    ]
    pairs, stats = build_dpo_pairs(data, max_pairs_per_prompt=2)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("m0", "n1"), ("m1", "n2")]
    pairs, stats = build_dpo_pairs(data, max_pairs_per_prompt=1)
    assert len(pairs) == 1 and stats.dropped["over_max_pairs_per_prompt"] == 1
    unanimous = [rec("b", 0, "7", "7", label="7", share=1.0), rec("b", 1, "7.", "7", label="7", share=1.0)]
    pairs, stats = build_dpo_pairs(unanimous)
    assert pairs == [] and stats.empty
    assert "no prompt has both a majority and a minority answer" in stats.why_empty()


def test_dpo_best_vs_worst_score_gap():
    data = [
        rec("a", 0, "good", "1", judge=5.0),
        rec("a", 1, "mid", "1", judge=3.0),
        rec("a", 2, "bad", "1", judge=1.0),
        rec("b", 0, "same1", "1", judge=2.0),
        rec("b", 1, "same2", "1", judge=2.0),
        rec("c", 0, "lonely", "1", judge=4.0),
    ]
    pairs, stats = build_dpo_pairs(data, strategy="best_vs_worst", degree="score_gap")
    # The score range over all records is 5 - 1 = 4: degree = (5 - 1) / 4.
    assert [(p["chosen"], p["rejected"], p["degree"]) for p in pairs] == [("good", "bad", 1.0)]
    assert stats.dropped["tied_scores"] == 1 and stats.dropped["fewer_than_two_judge_score"] == 1
    pairs, _ = build_dpo_pairs(data, strategy="best_vs_worst", degree="score_gap", score_scale=8.0)
    assert pairs[0]["degree"] == pytest.approx(0.5)
    pairs, stats = build_dpo_pairs(data, strategy="best_vs_worst", min_margin=5.0, degree=None)
    assert pairs == [] and stats.dropped["below_margin"] == 1


def test_dpo_bad_config():
    with pytest.raises(ConfigError, match="strategy must be one of"):
        build_dpo_pairs(SCORED, strategy="random")
    with pytest.raises(ConfigError, match="degree must be one of"):
        build_dpo_pairs(SCORED, degree="vote")


def test_grpo_prompts_from_scored_and_plain():
    rows, stats = build_grpo_prompts(SCORED)
    # "c" has no pseudo-label (the vote abstained): every sample would get the same reward.
    assert [(r["prompt_id"], r["pseudo_label"]) for r in rows] == [("a", "4"), ("b", "7"), ("d", "2")]
    assert stats.dropped == {"abstained": 1} and stats.prompts_in == 4 and stats.kept == 3
    rows, stats = build_grpo_prompts(SCORED, drop_abstained=False)
    assert [(r["prompt_id"], r["pseudo_label"]) for r in rows] == [
        ("a", "4"),
        ("b", "7"),
        ("c", None),
        ("d", "2"),
    ]
    rows, stats = build_grpo_prompts(SCORED, drop_unanimous=True, drop_abstained=False)
    assert [r["prompt_id"] for r in rows] == ["a", "c", "d"] and stats.dropped["unanimous"] == 1
    rows, stats = build_grpo_prompts(SCORED, drop_unanimous=True)
    assert [r["prompt_id"] for r in rows] == ["a", "d"]
    assert stats.dropped == {"unanimous": 1, "abstained": 1}
    plain = [{"prompt_id": "p1", "prompt": "1+1?", "meta": {"topic": "add"}}]
    rows, _ = build_grpo_prompts(plain, columns=("topic",))
    assert rows == [{"prompt": "1+1?", "prompt_id": "p1", "topic": "add"}]
    with pytest.raises(InputError, match="no column 'difficulty'"):
        build_grpo_prompts(plain, columns=("difficulty",))


@pytest.mark.parametrize("name", ["answer", "gold", "label", "solution", "ground_truth", "target"])
def test_grpo_refuses_gold_columns(name):
    with pytest.raises(LabelLeakError, match=name):
        build_grpo_prompts([{"prompt_id": "p", "prompt": "q"}], columns=(name,))
    with pytest.raises(LabelLeakError, match=name):
        build_grpo_prompts([{"prompt_id": "p", "prompt": "q", "meta": {name: "1"}}], columns=())


def test_dpo_d2o_positives():
    # Prompt a: chosen "so 4"; the other distinct majority text is "it is 4" (the duplicate "so 4"
    # is not a second positive). Prompt d: the truncated "two 2" is not usable, so no positive.
    pairs, _ = build_dpo_pairs(SCORED, d2o_positives=3)
    assert [(p["chosen"], p["d2o_positives"]) for p in pairs] == [("so 4", ["it is 4"]), ("2", [])]
    data = [rec("a", i, f"m{i}", "4", share=0.6) for i in range(3)] + [rec("a", 3, "n", "5", share=0.2)]
    pairs, _ = build_dpo_pairs(data, d2o_positives=1)
    assert pairs[0]["d2o_positives"] == ["m1"]
    # Best vs worst: positives score at least the chosen's score.
    data = [
        rec("a", 0, "g1", "1", judge=5.0),
        rec("a", 1, "g2", "1", judge=5.0),
        rec("a", 2, "b", "1", judge=1.0),
    ]
    pairs, _ = build_dpo_pairs(data, strategy="best_vs_worst", degree=None, d2o_positives=2)
    assert [(p["chosen"], p["d2o_positives"]) for p in pairs] == [("g1", ["g2"])]
    assert "d2o_positives" not in build_dpo_pairs(data, strategy="best_vs_worst", degree=None)[0][0]
    with pytest.raises(ConfigError, match="d2o_positives must be an integer >= 0"):
        build_dpo_pairs(SCORED, d2o_positives=-1)
