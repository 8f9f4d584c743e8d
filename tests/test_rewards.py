"""Reward functions in TRL's call shape: tables, label-leak guard, bad input, a real GRPO run."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfimprove.errors import ConfigError, InputError, LabelLeakError
from selfimprove.score.rewards import (
    LABEL_FREE_REWARDS,
    REWARDS,
    combine_rewards,
    completion_text,
    get_reward,
    make_paraphrases,
    tfidf_embed,
    verifier_reward,
)


def msgs(text):
    """A completion in TRL's conversational form."""
    return [{"role": "assistant", "content": text}]


MV_TABLE = [
    # completions, prompts, expected
    (["= 4", "= 4", "= 5", "none"], ["p"] * 4, [1.0, 1.0, 0.0, 0.0]),
    # two groups interleaved: grouping is by prompt, not by position
    (["1", "2", "2", "3", "1", "3"], ["a", "b", "b", "a", "a", "b"], [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]),
    # all-invalid group abstains: constant 0 (no signal)
    (["x", "y"], ["q", "q"], [0.0, 0.0]),
]


@pytest.mark.parametrize("completions,prompts,expected", MV_TABLE)
def test_majority_vote_reward_table(completions, prompts, expected):
    fn = get_reward("majority_vote", extractor="last_number")
    assert fn(completions, prompts=prompts) == expected
    # conversational completions give the same rewards
    assert fn([msgs(c) for c in completions], prompts=prompts) == expected


def test_majority_vote_groups_by_prompt_id_and_messages():
    fn = get_reward("majority_vote", extractor="boxed", tie_break="smallest")
    prompts = [[{"role": "user", "content": "q1"}]] * 2 + [[{"role": "user", "content": "q2"}]] * 2
    comps = ["\\boxed{3}", "\\boxed{2}", "\\boxed{9}", "\\boxed{9}"]
    assert fn(comps, prompts=prompts) == [0.0, 1.0, 1.0, 1.0]
    # prompt_id takes precedence over the prompt text
    assert fn(comps, prompts=prompts, prompt_id=["a"] * 4) == [0.0, 0.0, 1.0, 1.0]
    assert fn.__name__ == "majority_vote"
    assert fn.stats["samples"] == 8


def test_majority_vote_math_equivalence():
    fn = get_reward("majority_vote", extractor="boxed", math=True)
    comps = ["\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{3}"]
    assert fn(comps, prompts=["p"] * 3) == [1.0, 1.0, 0.0]


def test_majority_vote_logs_through_trl_log_metric():
    logged = {}
    fn = get_reward("majority_vote")
    fn(["1", "1", "2", "2", "2", "3"], prompts=list("aaabbb"), log_metric=lambda k, v: logged.update({k: v}))
    assert logged["majority_vote/majority_ratio"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_pseudo_label_and_paraphrase_rewards():
    fn = get_reward("pseudo_label", extractor="last_number")
    out = fn(["is 4", "is 4.0", "is 5", "??", "7"], pseudo_label=["4", "4", "4", "4", None])
    assert out == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert fn.stats["abstained"] == 1 and fn.stats["no_answer"] == 1
    co = get_reward("paraphrase_agreement", extractor="boxed", math=True)
    assert co(["\\boxed{0.5}", "\\boxed{2}"], paraphrase_label=["1/2", "1/2"]) == [1.0, 0.0]
    with pytest.raises(InputError, match="needs a 'pseudo_label' column"):
        fn(["1"], prompts=["p"])


def test_novelty_keeps_majority_above_minority():
    fn = get_reward("novelty", extractor="last_number", novelty_weight=0.9)
    comps = [
        "The answer is 4",
        "The answer is 4",
        "Adding two and two by counting fingers gives 4",  # majority, novel reasoning
        "totally different unusual reasoning path yields 5",  # minority, very novel
        "no answer",
    ]
    out = fn(comps, prompts=["p"] * 5)
    majority, minority = out[:3], out[3]
    assert min(majority) > minority
    assert out[2] > out[0]  # novelty varies within the majority side
    assert out[0] == pytest.approx(out[1])
    assert out[4] == -1.0
    assert all(0.1 <= r <= 1.0 for r in majority) and -1.0 <= minority <= -0.1


def test_novelty_property_random_groups():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    fn = get_reward("novelty", novelty_weight=0.99)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(st.text(max_size=40), st.sampled_from(["1", "2", "3", ""])), min_size=1, max_size=8
        )
    )
    def check(samples):
        comps = [f"{t} {a}" for t, a in samples]
        out = fn(comps, prompts=["p"] * len(comps))
        v = get_reward("majority_vote")(comps, prompts=["p"] * len(comps))
        agree = [r for r, m in zip(out, v, strict=True) if m == 1.0]
        other = [r for r, m in zip(out, v, strict=True) if m == 0.0]
        if agree and other and any(x != 0.0 for x in out):
            assert min(agree) > max(other)

    check()


def test_tfidf_embeddings_unit_and_similar():
    a, b, c = tfidf_embed(["the cat sat", "the cat sat", "zzzz qqqq"])
    assert sum(x * x for x in a.values()) == pytest.approx(1.0)
    assert sum(a[k] * b.get(k, 0) for k in a) == pytest.approx(1.0)
    assert sum(a[k] * c.get(k, 0) for k in a) < 0.2


def test_format_and_length_rewards():
    fmt = get_reward("format", extractor="boxed")
    assert fmt(["\\boxed{1}", "1"]) == [1.0, 0.0]
    tag = get_reward("format", pattern=r"<think>.*</think>\s*<answer>.*</answer>")
    assert tag(["<think>a\nb</think> <answer>3</answer>", "<answer>3</answer>"]) == [1.0, 0.0]
    ln = get_reward("length", max_length=10, min_length=2)
    assert ln(["x" * 5, "x" * 15, "x" * 30, "", "x"]) == [0.0, -0.5, -1.0, -1.0, -0.5]
    tok = get_reward("length", max_length=2, unit="tokens")
    assert tok(["a", "b"], completion_ids=[[1, 2], [1, 2, 3, 4]]) == [0.0, -1.0]
    with pytest.raises(InputError, match="completion_ids"):
        tok(["a"])
    with pytest.raises(ConfigError):
        get_reward("length")


def test_verifier_reward_is_supervised_and_reads_gold():
    fn = get_reward("gold_verifier", extractor="boxed")
    assert fn.__name__ == "verifier_reward"
    assert fn(["\\boxed{0.5}", "\\boxed{2}", "\\boxed{2}"], answer=["1/2", "3", None]) == [1.0, 0.0, None]
    with pytest.raises(InputError, match="gold column 'answer'"):
        fn(["\\boxed{1}"])
    assert verifier_reward(gold_column="gold")(["1"], gold=["1"]) == [1.0]


@pytest.mark.parametrize("name", sorted(LABEL_FREE_REWARDS - {"self_certainty"}))
@pytest.mark.parametrize(
    "column", ["answer", "gold", "label", "solution", "ground_truth", "target", "gold_answer"]
)
def test_label_free_rewards_refuse_gold(name, column):
    opts = {"max_length": 5} if name == "length" else {}
    fn = get_reward(name, **opts)
    cols = {
        "prompts": ["p", "p"],
        "pseudo_label": ["1", "1"],
        "paraphrase_label": ["1", "1"],
        column: ["1", "1"],
    }
    with pytest.raises(LabelLeakError, match=column):
        fn(["1", "2"], **cols)
    combined = combine_rewards([(fn, 1.0)])
    with pytest.raises(LabelLeakError):
        combined(["1", "2"], **cols)


def test_gold_named_label_column_rejected_at_construction():
    from selfimprove.score.rewards import ColumnAgreementReward

    with pytest.raises(LabelLeakError):
        ColumnAgreementReward("answer")


def test_mismatched_columns_and_empty_batches():
    fn = get_reward("majority_vote")
    with pytest.raises(InputError, match="column 'prompts' has 3 values but there are 2 completions"):
        fn(["1", "2"], prompts=["a", "b", "c"])
    assert fn([], prompts=[]) == []
    assert get_reward("novelty")([], prompts=[]) == []
    assert get_reward("pseudo_label")([], pseudo_label=[]) == []
    # a single completion, no prompts: one group
    assert fn(["7"]) == [1.0]
    # odd completion shapes do not crash
    assert fn([None, {"role": "assistant", "content": "3"}, [{"role": "user", "content": "9"}]]) == [
        0.0,
        1.0,
        0.0,
    ]


def test_completion_text_shapes():
    assert completion_text("a") == "a"
    assert completion_text(msgs("b")) == "b"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "c"}]}]) == "c"
    assert completion_text(None) == ""


def test_combine_rewards_weights_and_none():
    a = get_reward("pseudo_label")
    b = get_reward("length", max_length=3)
    combo = combine_rewards([(a, 1.0), (b, 0.5)], name="combo")
    assert combo.__name__ == "combo"
    out = combo(["1", "22222"], pseudo_label=["1", None])
    assert out == [1.0, 0.0 + 0.5 * (-2 / 3)]
    none_fn = lambda completions, **kw: [None] * len(completions)  # noqa: E731
    assert combine_rewards([(none_fn, 1.0)])(["x"]) == [None]
    assert "1*pseudo_label+0.5*length" == combine_rewards([(a, 1), (b, 0.5)]).__name__
    with pytest.raises(ConfigError):
        combine_rewards([])


def test_registry_and_errors():
    assert set(REWARDS) == {
        "majority_vote",
        "pseudo_label",
        "novelty",
        "paraphrase_agreement",
        "self_certainty",
        "gold_verifier",
        "format",
        "length",
    }
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(ConfigError, match="bad options"):
        get_reward("majority_vote", bogus=1)
    with pytest.raises(ConfigError, match="unknown extractor"):
        get_reward("majority_vote", extractor="nope")
    with pytest.raises(ValueError, match="tie_break"):
        get_reward("majority_vote", tie_break="coin")
    user = get_reward("tests.test_rewards:_user_reward")
    assert user(["ab"]) == [2.0]


def _user_reward(completions, **kw):
    return [float(len(c)) for c in completions]


class ScriptedGenerator:
    """Returns fixed rewrites (a paraphrasing LLM whose outputs are known)."""

    backend = "scripted"
    model = "scripted"

    def __init__(self, replies):
        self.replies = replies
        self.seen = []

    def generate(self, prompts, sampling, *, adapter=None, progress=False):
        from selfimprove.generate.base import Completion

        self.seen.extend(prompts)
        return [[Completion(r, "stop", 1, 1)] for r in self.replies[: len(prompts)]]

    def close(self):
        pass


def test_make_paraphrases_rejects_changed_numbers():
    gen = ScriptedGenerator(["Rewritten question: How much is 2 plus 3?", "What is 2 + 4?", "  "])
    stats = {}
    out = make_paraphrases(gen, ["What is 2 + 3?", "What is 2 + 3?", "Name a color."], stats=stats)
    assert out == ["How much is 2 plus 3?", None, None]
    assert stats == {"ok": 1, "numbers_changed": 1, "empty": 1}
    assert "What is 2 + 3?" in gen.seen[0][0]["content"]


# ---------------------------------------------------------------- model-backed rewards (tiny model)


@pytest.mark.slow
def test_self_certainty_matches_manual_kl(tiny_model_dir):
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fn = get_reward("self_certainty", model=str(tiny_model_dir))
    prompts = ["Q: 1+1?", "Q: 1+1?", "Q: 1+1?", "Q: other"]
    comps = ["2", "two!", "22", ""]
    raw = fn.raw_scores(prompts, comps)
    assert raw[3] is None  # empty completion: cannot score

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32")
    for p, c, got in zip(prompts[:3], comps[:3], raw[:3], strict=True):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p_ids + c_ids])).logits[0]
        logp = logits[len(p_ids) - 1 : len(p_ids) - 1 + len(c_ids)].log_softmax(-1)
        v = logp.shape[-1]
        kl = (-(math.log(v)) - logp.mean(-1)).mean().item()
        assert got == pytest.approx(kl, rel=1e-4)

    out = fn(comps, prompts=prompts)
    assert sum(out[:3]) == pytest.approx(0.0, abs=1e-6)  # z-scored within the group
    assert out[3] is None
    assert [x > 0 for x in out[:3]] == [r > sum(raw[:3]) / 3 for r in raw[:3]]
    # completion_ids (as TRL passes them) are used as given
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in comps]
    assert fn.raw_scores(prompts, ["ignored"] * 4, ids)[:3] == pytest.approx(raw[:3], rel=1e-5)
    with pytest.raises(LabelLeakError):
        fn(comps, prompts=prompts, answer=["2"] * 4)


@pytest.mark.slow
def test_novelty_with_local_model_embeddings(tiny_model_dir):
    fn = get_reward("novelty", embedder=str(tiny_model_dir), novelty_weight=0.5)
    comps = ["so 4", "hence 4", "4", "maybe 5", "xyz"]
    out = fn(comps, prompts=["p"] * 5)
    assert min(out[:3]) >= 0.5 and max(out[:3]) <= 1.0
    assert -1.0 <= out[3] <= -0.5 and out[4] == -1.0
    assert min(out[:3]) > out[3]


@pytest.mark.slow
def test_grpo_trainer_with_majority_vote_reward_changes_adapter(tiny_model_dir, tmp_path):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    reward = get_reward(
        "majority_vote", extractor="regex", extractor_options={"pattern": r"(\S)", "which": "first"}
    )
    seen = []

    def spy(completions, **columns):
        """Keep the rewards the trainer got, to check groups disagreed."""
        r = reward(completions, **columns)
        seen.append(r)
        return r

    spy.__name__ = "majority_vote"
    # Intuitor online: self-certainty on the very model object the trainer wraps with LoRA.
    from transformers import AutoModelForCausalLM

    from selfimprove.score.rewards import SelfCertaintyReward

    policy = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    certainty = SelfCertaintyReward(policy, tokenizer)
    probe = (["Q1: pick"], ["abcdef"])
    certainty_before = certainty.raw_scores(*probe)[0]
    data = Dataset.from_dict({"prompt": ["Q1: pick", "Q2: pick"], "prompt_id": ["p1", "p2"]})
    config = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        learning_rate=5e-3,
        temperature=1.5,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        disable_tqdm=True,
        reward_weights=[1.0, 0.0],  # self-certainty logged only: the vote drives training
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[spy, certainty],
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert before
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    # groups disagreed: rewards were not constant within a group, so GRPO had a signal
    assert any(0.0 in r and 1.0 in r for r in seen)
    logs = [h for h in trainer.state.log_history if "rewards/majority_vote/mean" in h]
    assert len(logs) == 2 and all(0.0 < h["rewards/majority_vote/mean"] <= 1.0 for h in logs)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    # z-scored within groups: the logged mean is ~0; the reward saw the trained (LoRA) policy
    assert all(abs(h["rewards/self_certainty/mean"]) < 1e-5 for h in logs)
    assert certainty.raw_scores(*probe)[0] != pytest.approx(certainty_before, abs=1e-7)


def test_rewards_property_unicode_and_long_inputs():
    import time

    from hypothesis import given, settings
    from hypothesis import strategies as st

    fns = [
        get_reward("majority_vote", extractor="boxed"),
        get_reward("novelty"),
        get_reward("format", extractor="answer_is"),
        get_reward("length", max_length=50),
        get_reward("pseudo_label", extractor="choice"),
    ]

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.text(max_size=200), min_size=1, max_size=6))
    def check(texts):
        cols = {"prompts": ["p"] * len(texts), "pseudo_label": ["A"] * len(texts)}
        for fn in fns:
            out = fn(texts, **cols)
            assert len(out) == len(texts)
            assert all(v is None or isinstance(v, float) for v in out)

    check()
    long = ["\\boxed{" * 30_000, "answer is " * 30_000, "x" * 500_000, "(" * 100_000]
    start = time.perf_counter()
    for fn in fns:
        assert len(fn(long, prompts=["p"] * 4, pseudo_label=["A"] * 4)) == 4
    assert time.perf_counter() - start < 20.0


def test_verifier_reward_check_replaces_math_verify():
    """math-verify reads lists as sets and strings as products of symbols, so with ``math=True`` an
    unsorted list or a swapped string would earn the gold reward; a task checker decides exactly."""
    loose = get_reward("gold_verifier", extractor="answer_is")
    strict = get_reward("gold_verifier", extractor="answer_is", check=lambda p, g: p == g)
    done = ["The answer is 10, 23, 45.", "The answer is 23, 10, 45.", "The answer is ACB.", "no answer"]
    gold = ["10, 23, 45", "10, 23, 45", "ABC", "ABC"]
    assert loose(done, answer=gold) == [1.0, 1.0, 1.0, 0.0]  # the pitfall, kept visible
    assert strict(done, answer=gold) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="check must be callable"):
        get_reward("gold_verifier", check="exact")


@pytest.mark.parametrize("task", ["arithmetic", "counting", "sorting", "string_ops"])
def test_loop_gold_reward_is_the_task_checker(task):
    """In the loop the SUPERVISED baseline's reward is 1 exactly where evaluation counts the answer
    correct: never for a slip (a swapped pair in a sorted list, a typo in a string)."""
    from selfimprove.loop.components import build_rewards
    from selfimprove.loop.config import load_config
    from selfimprove.tasks import get_task

    configs = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(configs / "gt_grpo_baseline.yaml", [f"task.name={task}"])
    t = get_task(task)
    [(name, fn, weight, reads_gold)] = build_rewards(cfg, t)
    assert (name, weight, reads_gold) == ("gold_verifier", 1.0, True)
    problems = t._problems("train", 20, 0, 1)
    slips = [(p, s) for p in problems for s in p.slips]
    assert len(slips) >= 20
    right = fn([p.solution for p in problems], answer=[p.answer for p in problems])
    assert right == [1.0] * len(problems)
    wrong = fn([s for _, s in slips], answer=[p.answer for p, _ in slips])
    expected = [float(t.check(t.extract(s), p.answer)) for p, s in slips]
    assert wrong == expected == [0.0] * len(slips)
