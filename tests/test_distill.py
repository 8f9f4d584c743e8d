"""Distillation without models: selection rules on hand-made scores, weights, labels, config errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from selfimprove.distill.config import DistillConfig, config_from_dict, load_config
from selfimprove.distill.label import answer_span, label_groups
from selfimprove.distill.selection import (
    AdaptiveThresholds,
    Candidate,
    SelectionSettings,
    candidates,
    keep_adaptive,
    rank_scores,
    sample_weights,
    select,
    weighted_rows,
)
from selfimprove.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def cand(pid: str, conf: float, need: float, label: str = "a") -> Candidate:
    return Candidate(pid, label, conf, need)


# ---------------------------------------------------------------------------------------------
# Selection rules
# ---------------------------------------------------------------------------------------------


def test_confidence_and_need_strategies_keep_the_top():
    pool = [cand("p0", 0.9, 0.1), cand("p1", 0.2, 3.0), cand("p2", 0.6, 2.0), cand("p3", 0.4, 0.5)]
    assert select(pool, "confidence", 2).prompt_ids == ["p0", "p2"]
    assert select(pool, "need", 2).prompt_ids == ["p1", "p2"]
    assert [r["weight"] for r in select(pool, "need", 2).rows] == [1.0, 1.0]
    # all ignores the size; random keeps exactly `size`, seeded, a subset of the pool
    assert select(pool, "all", 2).prompt_ids == ["p0", "p1", "p2", "p3"]
    r1, r2 = select(pool, "random", 3, seed=1), select(pool, "random", 3, seed=1)
    assert r1.prompt_ids == r2.prompt_ids and len(set(r1.prompt_ids)) == 3
    assert {tuple(sorted(select(pool, "random", 2, seed=s).prompt_ids)) for s in range(20)} != {("p0", "p1")}


def test_llkd_fixed_threshold_keeps_both_above():
    pool = [
        cand("hi-hi", 0.9, 2.0),
        cand("hi-lo", 0.9, 0.1),
        cand("lo-hi", 0.1, 2.0),
        cand("lo-lo", 0.1, 0.1),
    ]
    s = SelectionSettings(threshold="fixed", fixed_confidence=0.5, fixed_need=1.0, weight="none")
    sel = select(pool, "llkd", None, s)
    assert sel.prompt_ids == ["hi-hi"] and sel.passed == 1 and sel.filled == 0
    # at a size above what passed, fill adds the best-ranked others (rank conf x rank need)
    sel = select(pool, "llkd", 3, s)
    assert sel.prompt_ids[0] == "hi-hi" and len(sel.rows) == 3 and sel.filled == 2
    assert [r["filled"] for r in sel.rows] == [False, True, True]
    assert "lo-lo" not in sel.prompt_ids
    no_fill = SelectionSettings(threshold="fixed", fixed_confidence=0.5, fixed_need=1.0, fill=False)
    assert select(pool, "llkd", 3, no_fill).prompt_ids == ["hi-hi"]
    # everything filtered out: an empty selection, not an error
    none = SelectionSettings(threshold="fixed", fixed_confidence=2.0)
    assert select(pool, "llkd", None, none).rows == []


def test_adaptive_thresholds_follow_the_stream_and_the_class():
    # Confidence rises along the stream: the thresholds judging later batches rise with it.
    pool = [cand(f"p{i:02d}", conf=i / 40, need=1.0) for i in range(40)]
    s = SelectionSettings(threshold="adaptive", momentum=0.5, stream_batch=8, min_class_count=100)
    # keep_adaptive shuffles the stream; judge an ordered stream through the rule directly
    rule = AdaptiveThresholds(s.momentum, s.min_class_count, {"a": 40})
    seen = []
    for start in range(0, 40, 8):
        batch = pool[start : start + 8]
        rule.start(batch)
        seen.append(rule.thresholds("a")[0])
        rule.update(batch)
    assert seen == sorted(seen) and seen[-1] > seen[0] + 0.3
    # per class: two classes on different confidence scales each keep their own upper part
    low = [cand(f"l{i}", 0.1 + 0.01 * i, 1.0 + 0.1 * i, "L") for i in range(10)]
    high = [cand(f"h{i}", 0.8 + 0.01 * i, 1.0 + 0.1 * i, "H") for i in range(10)]
    s = SelectionSettings(threshold="adaptive", momentum=0.0, stream_batch=20, min_class_count=3)
    kept, thresholds = keep_adaptive(low + high, s, seed=0)
    kept_ids = {c.prompt_id for c in kept}
    assert {"l9", "h9"} <= kept_ids and "l0" not in kept_ids and "h0" not in kept_ids
    assert any(p.startswith("l") for p in kept_ids)  # a global threshold (~0.5) would keep no "L"
    assert thresholds["l5"][0] == pytest.approx(sum(c.confidence for c in low) / 10)
    assert thresholds["h5"][0] == pytest.approx(sum(c.confidence for c in high) / 10)
    # a class with fewer than min_class_count members is judged by the global averages
    rare = cand("r0", 0.05, 5.0, "R")
    one_batch = SelectionSettings(threshold="adaptive", momentum=0.0, stream_batch=32, min_class_count=3)
    _, th = keep_adaptive([*low, *high, rare], one_batch, seed=0)
    assert th["r0"][0] == pytest.approx(sum(c.confidence for c in [*low, *high, rare]) / 21)


def test_weights_are_bounded_and_ordered():
    pool = [cand(f"p{i}", conf=0.05 + 0.1 * i, need=0.1 + i) for i in range(10)]
    for rule in ("confidence", "need", "product"):
        s = SelectionSettings(weight=rule, weight_min=0.5, weight_max=1.5)
        w = sample_weights(pool, s)
        assert all(0.5 <= x <= 1.5 for x in w)
        assert w == sorted(w) and w[0] == 0.5 and w[-1] == 1.5  # both bounds reached here
        assert any(0.5 < x < 1.5 for x in w)
    assert sample_weights(pool, SelectionSettings(weight="none")) == [1.0] * 10
    sel = select(pool, "llkd", None, SelectionSettings(threshold="none", weight="product"))
    assert len(sel.rows) == 10 and all(0.5 <= r["weight"] <= 2.0 for r in sel.rows)
    # the llkd order is by rank of confidence x rank of need
    scores = rank_scores(pool)
    assert sel.prompt_ids == sorted(scores, key=lambda p: -scores[p])


def test_weighted_rows_follow_the_weights():
    rows = [{"i": 0}, {"i": 1}, {"i": 2}]
    out = weighted_rows(rows, [1.0, 2.0, 1.0], 8, seed=0)
    counts = [sum(r["i"] == i for r in out) for i in range(3)]
    assert counts == [2, 4, 2]
    assert (
        weighted_rows(rows, [1.0, 1.0, 1.0], 3, seed=0) != []
        and len(weighted_rows(rows, [1, 1, 1], 7, 0)) == 7
    )
    with pytest.raises(ValueError):
        weighted_rows(rows, [1.0], 3, seed=0)


def test_candidates_read_the_measures():
    items = [
        {
            "prompt_id": "a",
            "teacher_label": "x",
            "vote_share": 0.5,
            "label_prob": 0.9,
            "entropy": 1.0,
            "loss": 2.0,
        },
        {
            "prompt_id": "b",
            "teacher_label": "y",
            "vote_share": 0.75,
            "label_prob": None,
            "entropy": 3.0,
            "loss": 4.0,
        },
    ]
    auto = candidates(items, "auto", "entropy")
    assert [(c.confidence, c.need) for c in auto] == [(0.9, 1.0), (0.75, 3.0)]
    assert [c.confidence for c in candidates(items, "vote_share", "loss")] == [0.5, 0.75]
    with pytest.raises(ValueError, match="no label probability"):
        candidates(items, "label_prob", "entropy")


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def test_label_groups_vote_and_confidence():
    def rec(pid, k, answer, lp=None, text=None):
        return {
            "prompt_id": pid,
            "prompt": "q",
            "sample_index": k,
            "completion": text or f"The answer is {answer}.",
            "answer": answer,
            "answer_span": None,
            "answer_logprob": lp,
        }

    recs = [
        rec("p", 0, "7", math.log(0.5)),
        rec("p", 1, "8", math.log(0.9)),
        rec("p", 2, "7", math.log(0.7)),
        rec("p", 3, None, None, "no idea"),
        rec("q", 0, None, None, "???"),
        rec("q", 1, None, None, "!!!"),
    ]
    rows = {r["prompt_id"]: r for r in label_groups(recs)}
    assert rows["p"]["teacher_label"] == "7"
    assert rows["p"]["vote_share"] == pytest.approx(0.5)  # 2 of 4 samples (the unanswered one counts)
    assert rows["p"]["label_prob"] == pytest.approx(0.6)  # mean over the agreeing samples
    assert rows["p"]["completion"] == "The answer is 7."
    assert rows["q"]["teacher_label"] is None and rows["q"]["reason"] == "no_answers"
    assert answer_span("The answer is 7. 7", "7") == (17, 18) and answer_span("x", "7") is None


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

BASE = {"teacher": {"model": "builtin:string_ops"}, "student": {"model": "/nonexistent"}}


def test_config_errors_name_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("teacher:\n  model: builtin:string_ops\n  kk: 3\nstudent:\n  model: x\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: teacher.kk: unknown key \(did you mean 'k'\?\)"):
        load_config(p)
    with pytest.raises(
        ConfigError, match="budget.teacher_calls: 0 teacher samples cannot label a single input"
    ):
        config_from_dict(BASE, ["budget.teacher_calls=0"])
    with pytest.raises(ConfigError, match="selection.strategies"):
        config_from_dict(BASE, ["selection.strategies=[llkd, best]"])
    with pytest.raises(
        ConfigError, match=r"training.trl.learning_rat: not a field of TRL's SFTConfig \(did you"
    ):
        config_from_dict(BASE, ["training.trl.learning_rat=0.1"])
    with pytest.raises(ConfigError, match="teacher.options.batch_sz: unknown option"):
        config_from_dict(BASE, ["teacher.backend=hf", "teacher.options.batch_sz=4"])
    with pytest.raises(ConfigError, match="weight_min"):
        config_from_dict(BASE, ["selection.weight_min=3"])
    with pytest.raises(ConfigError, match=r"every k must be in 1..n=4"):
        config_from_dict(BASE, ["evaluation.n=4"])
    with pytest.raises(ConfigError, match="training.method: gkd needs the teacher's weights"):
        config_from_dict(BASE, ["teacher.backend=openai", "training.method=gkd"])
    with pytest.raises(ConfigError, match=r"training.trl.lmbd: not a field of TRL's GKDConfig \(did you"):
        config_from_dict(BASE, ["training.method=gkd", "training.trl.lmbd=0.5"])
    assert config_from_dict(BASE, ["training.method=gkd", "training.trl.lmbda=0.5"]).training.trl == {
        "lmbda": 0.5
    }
    cfg = config_from_dict(BASE, ["budget.teacher_calls=8"])
    assert isinstance(cfg, DistillConfig) and cfg.name == "distill"


def test_fingerprint_ignores_what_resume_may_change():
    a = config_from_dict(BASE)
    b = config_from_dict(
        BASE, ["selection.strategies=[random]", "training.max_steps=3", "budget.teacher_calls=64"]
    )
    c = config_from_dict(BASE, ["teacher.k=4"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_shipped_configs_load():
    files = sorted((REPO / "configs" / "distill").glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config(f)
        assert cfg.teacher.model and cfg.student.model
        assert (REPO / "selfimprove" / "configs" / "distill" / f.name).is_file()  # shipped in the package


def test_docs_table_is_current(tmp_path):
    """docs/distill.md's generated table matches the schema (regenerate: python -m selfimprove.distill.config)."""
    from selfimprove.distill.config import update_docs

    copy = tmp_path / "distill.md"
    copy.write_text((REPO / "docs" / "distill.md").read_text())
    assert not update_docs(copy), (
        "docs/distill.md is stale: python -m selfimprove.distill.config docs/distill.md"
    )


# ---------------------------------------------------------------------------------------------
# Distilling step-by-step: the rationale as a second, prefixed task
# ---------------------------------------------------------------------------------------------


def test_rationale_is_the_worked_solution_without_the_answer_sentence():
    from selfimprove.distill.runner import rationale_text

    text = "59 - 7: units 9 - 7 = 2, tens 5.\nThe answer is 52."
    row = {"completion": text, "completion_span": list(answer_span(text, "52"))}
    assert rationale_text(row) == "59 - 7: units 9 - 7 = 2, tens 5."
    assert rationale_text({"completion": "The answer is OID.", "completion_span": [14, 17]}) == ""
    assert rationale_text({"completion": "no span here", "completion_span": None}) == "no span here"


def test_rationale_target_gives_two_prefixed_tasks_and_a_predict_prompt():
    from selfimprove.distill.runner import eval_prefix, training_pairs, with_prefix
    from selfimprove.tasks import get_task

    task = get_task("arithmetic", instruction=False)
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Jon has 59 apples."}]
    text = "59 - 7 = 52.\nThe answer is 52."
    row = {"prompt": prompt, "teacher_label": "52", "completion": text, "completion_span": [27, 29]}
    cfg = config_from_dict(BASE, ["training.target=rationale"])
    pairs = training_pairs(row, cfg.training, task)
    assert pairs == [
        ([prompt[0], {"role": "user", "content": "predict: Jon has 59 apples."}], "The answer is 52."),
        ([prompt[0], {"role": "user", "content": "explain: Jon has 59 apples."}], "59 - 7 = 52."),
    ]
    assert prompt[1]["content"] == "Jon has 59 apples."  # the input row is not changed
    assert eval_prefix(cfg) == "predict: " and eval_prefix(config_from_dict(BASE)) == ""
    # a sample that is only the answer: the label task alone
    only = {**row, "completion": "The answer is 52.", "completion_span": [14, 16]}
    assert [t for _p, t in training_pairs(only, cfg.training, task)] == ["The answer is 52."]
    # the other targets: one pair, the prompt unchanged
    assert training_pairs(row, config_from_dict(BASE).training, task) == [(prompt, text)]
    label_cfg = config_from_dict(BASE, ["training.target=label"])
    assert training_pairs(row, label_cfg.training, task) == [(prompt, "The answer is 52.")]
    assert with_prefix("plain prompt", "p: ") == "p: plain prompt"
    with pytest.raises(ConfigError, match="could not tell the label task from the rationale task"):
        config_from_dict(BASE, ["training.target=rationale", "training.explain_prefix='predict: '"])
