"""Gold labels in one place: the same names are refused, the same way, on every label-free path."""

from __future__ import annotations

import json

import pytest

from selfimprove.data.build import build_dpo_pairs, build_grpo_prompts, build_sft_rows
from selfimprove.errors import ConfigError, InputError, LabelLeakError
from selfimprove.gold import GOLD_FIELDS, check_no_gold, is_gold_name, reads_gold, supervised_reward
from selfimprove.score.rewards import LABEL_FREE_REWARDS, REWARDS, get_reward, is_supervised_reward
from selfimprove.score.rollouts import score_rollouts

# Gold-named in every spelling a dataset uses; the label-free columns the loop really passes are not.
GOLD_NAMES = ["answer", "Answer", "Gold", "gold_answer", "GOLD_LABEL", "ground_truth", "Target", "solution"]
FREE_NAMES = [
    "prompt",
    "prompt_id",
    "pseudo_label",
    "paraphrase_label",
    "majority_ratio",
    "goal",
    "labels_seen",
]


@pytest.mark.parametrize("name", GOLD_NAMES)
def test_gold_names(name):
    assert is_gold_name(name)
    with pytest.raises(LabelLeakError, match=name):
        check_no_gold(["prompt", name], "a label-free place")


@pytest.mark.parametrize("name", FREE_NAMES)
def test_label_free_names(name):
    assert not is_gold_name(name)
    check_no_gold([name], "a label-free place")


def test_one_list():
    assert {"answer", "gold", "label", "solution", "ground_truth", "target"} == GOLD_FIELDS


def _scored(extra: dict | None = None, meta: dict | None = None) -> list[dict]:
    recs = []
    for i, ans in enumerate(["a", "a", "b"]):
        rec = {
            "prompt_id": "p0",
            "prompt": "q",
            "sample_index": i,
            "completion": ans,
            "extracted": ans,
            "pseudo_label": "a",
            "majority_ratio": 2 / 3,
            "reward": 1.0 if ans == "a" else 0.0,
            "rewards": {"majority_vote": 1.0 if ans == "a" else 0.0},
            "meta": dict(meta or {}),
            **(extra or {}),
        }
        recs.append(rec)
    return recs


@pytest.mark.parametrize("name", ["Gold", "gold_answer", "answer"])
@pytest.mark.parametrize("builder", [build_sft_rows, build_dpo_pairs, build_grpo_prompts])
def test_data_builders_refuse_a_gold_column(builder, name):
    assert builder(_scored())  # the same records without the gold column build
    with pytest.raises(LabelLeakError, match=name):
        builder(_scored(extra={name: "a"}))
    with pytest.raises(LabelLeakError, match=name):
        builder(_scored(meta={name: "a"}))


@pytest.mark.parametrize("name", ["Gold", "gold_answer"])
def test_grpo_columns_refuse_a_gold_column(name):
    with pytest.raises(LabelLeakError, match=name):
        build_grpo_prompts(_scored(extra={name: "a"}), columns=[name])


@pytest.mark.parametrize("name", ["Gold", "gold_answer", "answer"])
@pytest.mark.parametrize("reward", sorted(LABEL_FREE_REWARDS - {"self_certainty", "paraphrase_agreement"}))
def test_label_free_rewards_refuse_a_gold_column(reward, name):
    fn = get_reward(reward, **({"max_length": 10} if reward == "length" else {}))
    with pytest.raises(LabelLeakError, match=name):
        fn(["The answer is 3."], prompt_id=["p0"], **{name: ["3"]})


@pytest.mark.parametrize("name", ["Gold", "gold_answer"])
def test_label_free_scoring_refuses_a_gold_field(name):
    rollouts = [{"prompt_id": "p0", "completion": "3", "sample_index": 0}]
    assert score_rollouts(rollouts)[0]["extracted"] == "3"
    with pytest.raises(LabelLeakError, match=name):
        score_rollouts([{**rollouts[0], name: "3"}])
    with pytest.raises(LabelLeakError, match=name):
        score_rollouts([{**rollouts[0], "meta": {name: "3"}}])


def test_supervised_rewards_are_known_from_the_registry():
    assert {name for name in REWARDS if is_supervised_reward(name)} == {"gold_verifier"}
    assert LABEL_FREE_REWARDS == frozenset(REWARDS) - {"gold_verifier"}
    assert reads_gold(get_reward("gold_verifier")) and not reads_gold(get_reward("majority_vote"))
    assert not is_supervised_reward("verifier")  # not registered: not a second hand-kept name


@supervised_reward
def user_gold_reward(completions, **columns):
    """A user's reward that reads gold, marked as such."""
    return [float(c == a) for c, a in zip(completions, columns["answer"], strict=True)]


def test_a_marked_user_reward_needs_a_supervised_run(tmp_path, tiny_model_dir):
    from selfimprove.loop.config import load_config
    from selfimprove.loop.runner import run

    task = tmp_path / "task.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Say {i}.", "answer": str(i), "split": "train"} for i in range(4)]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"name: t\nmodel: {{path: {tiny_model_dir}}}\ntask: {{name: null, file: {task}}}\n"
        "scoring: {rewards: [{name: 'test_gold:user_gold_reward'}]}\ngeneration: {backend: hf}\n"
    )
    with pytest.raises(ConfigError, match="reads gold labels.*supervised: true"):
        run(load_config(cfg), tmp_path / "run", progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["Gold", "gold_answer"])
def test_a_user_task_with_a_second_gold_field_is_refused(tmp_path, name):
    from selfimprove.tasks import get_task

    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps({"prompt": "Say 1.", "answer": "1", name: "1"}) + "\n")
    with pytest.raises(InputError, match=f"{path}:1: field.*{name}"):
        get_task(str(path))


class LeakyTask:
    """A user's Task object whose prompt records carry a gold field (a bug the runner must catch)."""

    name = "leaky"
    extractor = "last_number"
    extractor_options: dict = {}

    def __init__(self, field: str, in_meta: bool):
        self.field, self.in_meta = field, in_meta

    def make_split(self, split, n=None, seed=0, level=None):
        rec = {"prompt_id": "p0", "prompt": "Say 1.", "meta": {}}
        (rec["meta"] if self.in_meta else rec)[self.field] = "1"
        return [rec], {"p0": "1"}

    def extract(self, text):
        return text.strip() or None

    def check(self, pred, gold):
        return pred == gold


@pytest.mark.parametrize("in_meta", [False, True])
@pytest.mark.parametrize("name", ["Gold", "gold_answer", "answer"])
def test_the_runner_refuses_train_prompts_with_a_gold_field(tmp_path, name, in_meta):
    from selfimprove.loop.config import validate_config
    from selfimprove.loop.inputs import train_prompts

    cfg = validate_config({"name": "t", "model": {"path": str(tmp_path)}, "task": {"name": "arithmetic"}})
    with pytest.raises(LabelLeakError, match=f"train prompt 'p0'.*{name}"):
        train_prompts(cfg, LeakyTask(name, in_meta), 1)
    assert train_prompts(cfg, LeakyTask("question_text", in_meta), 1)[0]["prompt_id"] == "p0"


def test_run_with_a_task_object_refuses_gold_before_writing(tmp_path, tiny_model_dir):
    """run(task=...) takes a Task object; its train prompts are checked for gold before the folder exists."""
    from selfimprove import load_config, run

    cfg = load_config({"name": "t", "model": {"path": str(tiny_model_dir)}, "generation": {"backend": "hf"}})
    with pytest.raises(LabelLeakError, match="train prompt 'p0'.*Gold"):
        run(cfg, tmp_path / "run", task=LeakyTask("Gold", in_meta=True), progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()
