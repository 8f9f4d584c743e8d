"""Distillation with real models: the scorer against a forward pass, end-to-end runs on HF and vLLM,
different tokenizers, gold kept out of selection and training, resume after kill -9, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfimprove.runs import read_jsonl

REPO = Path(__file__).resolve().parent.parent
TEACHER = "builtin:string_ops"  # the shipped string_ops model: labels right about 75% of the time


# ---------------------------------------------------------------------------------------------
# Fixtures: students with the teacher's tokenizer family and with a different (BPE) tokenizer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def char_student(tmp_path_factory) -> Path:
    """A 1-layer random Qwen2 with the char tokenizer and the compact template (like the teacher's)."""
    from selfimprove.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("char_student")
    return build_tiny_model(out, hidden_size=64, num_layers=1, num_heads=1, chat_template="compact", seed=1)


@pytest.fixture(scope="module")
def bpe_student(tmp_path_factory) -> Path:
    """A 1-layer random Qwen2 whose tokenizer has BPE merges and another id order than the teacher's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    from selfimprove.models.tiny import SPECIAL_TOKENS, TEMPLATES, build_tiny_model

    out = build_tiny_model(
        tmp_path_factory.mktemp("bpe_student"),
        hidden_size=64,
        num_layers=1,
        num_heads=1,
        chat_template="compact",
    )
    merges = [
        ("T", "h"),
        ("Th", "e"),
        ("Ġ", "a"),
        ("a", "n"),
        ("Ġa", "n"),
        ("e", "r"),
        ("i", "s"),
        ("Ġ", "is"),
    ]
    # The teacher-like tokenizer's byte symbols, in reverse id order, then merges.
    base = AutoTokenizer.from_pretrained(out).get_vocab()
    symbols = [t for t, _i in sorted(base.items(), key=lambda kv: kv[1]) if t not in SPECIAL_TOKENS]
    vocab = {
        t: i for i, t in enumerate(SPECIAL_TOKENS + list(reversed(symbols)) + [a + b for a, b in merges])
    }
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|unk|>",
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        padding_side="left",
    )
    tok.chat_template = TEMPLATES["compact"]
    tok.save_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    model.resize_token_embeddings(len(tok))
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def direct_scores(model_dir: Path, prompt, completion: str) -> tuple[float, float, int]:
    """Loss by the model's own loss (labels -100 on the prompt) and mean entropy, one unpadded pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfimprove.generate import render_prompt

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    _, p_ids = render_prompt(tok, prompt)
    c_ids = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([list(p_ids) + c_ids])
    labels = torch.tensor([[-100] * len(p_ids) + c_ids])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    logp = out.logits[0, len(p_ids) - 1 : -1].log_softmax(-1)
    entropy = float(-(logp.exp() * logp).sum(-1).mean())
    return float(out.loss), entropy, len(c_ids)


def test_scorer_loss_equals_a_direct_forward_pass(char_student, bpe_student):
    from selfimprove.distill.scorer import StudentScorer

    prompts = [
        [{"role": "user", "content": "Write 'oid' in capitals."}],
        [{"role": "user", "content": "Reverse the word 'banana', then write it twice."}],
    ]
    completions = ["The answer is OID.", "The answer is ananab ananab."]
    for model_dir in (char_student, bpe_student):
        scorer = StudentScorer(model_dir, batch_size=2)  # both in one padded batch
        got = scorer.score(prompts, completions)
        for p, c, s in zip(prompts, completions, got, strict=True):
            loss, entropy, n = direct_scores(model_dir, p, c)
            assert s.tokens == n
            assert s.loss == pytest.approx(loss, abs=1e-5)
            assert s.entropy == pytest.approx(entropy, abs=1e-5)
    # different tokenizers: the same text is 18 char tokens for one student, fewer BPE tokens for the other
    char_n = StudentScorer(char_student).score(prompts[:1], completions[:1])[0].tokens
    bpe_n = StudentScorer(bpe_student).score(prompts[:1], completions[:1])[0].tokens
    assert char_n == len(completions[0]) and bpe_n < char_n
    # a label span measures exactly the label's tokens
    span = StudentScorer(char_student).score(prompts[:1], completions[:1], [(14, 17)])[0]
    assert span.tokens == 3


def test_label_probability_from_hf_logprobs():
    from selfimprove.distill.label import answer_span, span_logprob
    from selfimprove.generate import build_generator
    from selfimprove.generate.base import Sampling
    from selfimprove.models.loading import resolve_model
    from selfimprove.tasks import get_task

    task = get_task("string_ops", instruction=False)
    prompts, _ = task.make_split("train", n=3, seed=0)
    gen = build_generator("hf", resolve_model(TEACHER))
    groups = gen.generate([p["prompt"] for p in prompts], Sampling(n=2, max_tokens=48, seed=0, logprobs=0))
    checked = 0
    for group in groups:
        for c in group:
            answer = task.extract(c.text)
            span = answer_span(c.text, answer)
            if span is None:
                continue
            lp = span_logprob(gen.tokenizer, c, span)
            # char tokenizer: the label's tokens are its characters, right before the final "."
            n = span[1] - span[0]
            assert lp == pytest.approx(sum(c.token_logprobs[span[0] : span[0] + n]), abs=1e-6)
            assert lp <= 0
            checked += 1
    assert checked >= 3


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def base_config(student_dir: Path, **over) -> dict:
    cfg = {
        "teacher": {"model": TEACHER, "backend": "hf", "k": 4, "max_tokens": 28, "batch_size": 8},
        "student": {"model": str(student_dir), "backend": "hf"},
        "task": {"name": "string_ops", "unlabeled_size": 24, "eval_size": 8},
        "selection": {
            "strategies": ["random", "confidence", "need", "llkd"],
            "sizes": [6],
            "confidence": "auto",
        },
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 0.01},
        "evaluation": {"n": 4, "k": [4]},
    }
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def recomputed_pass1(run_dir: Path, sub: str, task) -> float:
    """pass@1 from the stored held-out samples and the gold answers (independent of the runner)."""
    prompts, gold = task.make_split("eval", n=8, seed=0)
    recs = read_jsonl(run_dir / sub / "rollouts.jsonl")
    per: dict[str, list[bool]] = {}
    for r in recs:
        per.setdefault(r["prompt_id"], []).append(
            task.check(task.extract(r["completion"]), gold[r["prompt_id"]])
        )
    assert set(per) == {p["prompt_id"] for p in prompts}
    return sum(sum(v) / len(v) for v in per.values()) / len(per)


def assert_no_gold_keys(run_dir: Path) -> None:
    from selfimprove.tasks import find_gold_keys

    files = [run_dir / "labels.jsonl", run_dir / "need.jsonl", *run_dir.glob("variants/*/selection.jsonl")]
    files += list(run_dir.glob("variants/*/train_rows.jsonl"))
    for f in files:
        for row in read_jsonl(f):
            assert find_gold_keys(row) == [], f"{f}: {find_gold_keys(row)}"


@pytest.mark.slow
def test_distill_end_to_end_hf_with_a_different_tokenizer(tmp_path, bpe_student):
    from safetensors.torch import load_file

    from selfimprove.distill import distill
    from selfimprove.tasks import get_task

    run_dir = tmp_path / "run"
    result = distill(base_config(bpe_student), run_dir, progress=False)
    s = result.summary
    task = get_task("string_ops", instruction=False)
    assert s["label"]["inputs"] == 24 and s["label"]["teacher_samples"] == 96
    assert s["label"]["label_prob_share"] == 1.0  # the hf backend returns log-probabilities
    labels = read_jsonl(run_dir / "labels.jsonl")
    assert all(0 < r["label_prob"] <= 1 for r in labels if r["teacher_label"] is not None)
    assert s["teacher"]["pass@1"] == pytest.approx(recomputed_pass1(run_dir, "eval/teacher", task))
    assert s["student_before"]["pass@1"] == pytest.approx(
        recomputed_pass1(run_dir, "eval/student_before", task)
    )
    assert s["teacher"]["pass@1"] > s["student_before"]["pass@1"]
    # the student's need was measured with its own (BPE) tokenizer: fewer tokens than characters
    need = {r["prompt_id"]: r for r in read_jsonl(run_dir / "need.jsonl")}
    some = next(r for r in labels if r["teacher_label"] is not None)
    assert 0 < need[some["prompt_id"]]["tokens"] < len(some["completion"])
    keys = [v["key"] for v in s["variants"]]
    assert keys == ["random-6", "confidence-6", "need-6", "llkd-6"]
    selections = {}
    for v in s["variants"]:
        assert v["select"]["selected"] == 6 and v["train"]["steps"] == 2
        rows = read_jsonl(run_dir / "variants" / v["key"] / "train_rows.jsonl")
        assert len(rows) == 6
        weights = load_file(str(run_dir / "variants" / v["key"] / "adapter" / "adapter_model.safetensors"))
        assert any(float(t.abs().max()) > 0 for n, t in weights.items() if "lora_B" in n)  # B starts at 0
        assert "pass@1" in v["evaluate"]
        selections[v["key"]] = {
            r["prompt_id"] for r in read_jsonl(run_dir / "variants" / v["key"] / "selection.jsonl")
        }
    conf_rows = read_jsonl(run_dir / "variants" / "confidence-6" / "selection.jsonl")
    kept_conf = min(r["confidence"] for r in conf_rows)
    dropped = [
        r
        for r in labels
        if r["teacher_label"] is not None and r["prompt_id"] not in selections["confidence-6"]
    ]
    assert dropped and all(
        r["label_prob"] <= kept_conf for r in dropped
    )  # confidence "auto" = label_prob here
    assert_no_gold_keys(run_dir)
    report = (run_dir / "report.md").read_text()
    for key in keys:
        assert f"student after {key}" in report and f"| {key} |" in report
    assert "<svg" in (run_dir / "report.html").read_text()
    # resume of a finished run redoes nothing; a new selection setting redoes only the variants
    mtime = (run_dir / "teacher" / "rollouts.jsonl").stat().st_mtime_ns
    again = distill(base_config(bpe_student), run_dir, resume=True, progress=False)
    assert again.summary["variants"] == s["variants"]
    more = distill(
        base_config(bpe_student, selection={"strategies": ["llkd"], "sizes": [6], "weight": "none"}),
        run_dir,
        resume=True,
        progress=False,
    )
    assert (run_dir / "teacher" / "rollouts.jsonl").stat().st_mtime_ns == mtime
    assert [v["key"] for v in more.summary["variants"]] == ["llkd-6"]
    assert {r["weight"] for r in read_jsonl(run_dir / "variants" / "llkd-6" / "selection.jsonl")} == {1.0}


def write_user_task(path: Path, gold_of) -> Path:
    """string_ops prompts as a user JSONL task: train rows carry gold (kept apart), eval rows too."""
    from selfimprove.tasks import get_task

    task = get_task("string_ops", instruction=False)
    lines = []
    for split in ("train", "eval"):
        prompts, gold = task.make_split(split, n=10 if split == "train" else 4, seed=0)
        for i, p in enumerate(prompts):
            answer = gold_of(i, gold[p["prompt_id"]]) if split == "train" else gold[p["prompt_id"]]
            lines.append(
                json.dumps({"id": p["prompt_id"], "prompt": p["prompt"], "answer": answer, "split": split})
            )
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_gold_never_reaches_selection_or_training(tmp_path, char_student):
    """Two task files that differ only in the train rows' gold give byte-identical labels, needs,
    selections and training rows: nothing on the label-free path can read gold."""
    from selfimprove.distill import distill

    outputs = []
    for name, gold_of in (("right", lambda i, g: g), ("wrong", lambda i, g: f"WRONG{i}")):
        task_file = write_user_task(tmp_path / f"{name}.jsonl", gold_of)
        cfg = base_config(
            char_student,
            task={"name": None, "file": str(task_file), "unlabeled_size": None, "eval_size": None},
            selection={"strategies": ["random", "llkd"], "sizes": [4]},
        )
        run_dir = tmp_path / name
        cfg["evaluation"] = {"enabled": False}  # no gold read anywhere in this run
        cfg["training"]["max_steps"] = 1
        distill(cfg, run_dir, progress=False)
        files = ["labels.jsonl", "need.jsonl", "teacher/rollouts.jsonl"]
        for key in ("random-4", "llkd-4"):
            files += [f"variants/{key}/selection.jsonl", f"variants/{key}/train_rows.jsonl"]
        outputs.append([(run_dir / f).read_bytes() for f in files])
        assert_no_gold_keys(run_dir)
        assert not (run_dir / "eval").exists()
    assert outputs[0] == outputs[1]
    # and until="select" stops before training
    distill(cfg, tmp_path / "until", progress=False, until="select")
    assert (tmp_path / "until" / "variants" / "llkd-4" / "selection.jsonl").exists()
    assert not (tmp_path / "until" / "variants" / "llkd-4" / "train_rows.jsonl").exists()


@pytest.mark.slow
def test_rationale_two_task_training_end_to_end(tmp_path, char_student):
    """Distilling step-by-step on arithmetic (the teacher writes worked solutions): per selected
    input a predict row (the label) and an explain row (the teacher's solution without its answer
    sentence); the trained student is evaluated with the predict prefix, the base student without."""
    from selfimprove.distill import distill
    from selfimprove.distill.runner import rationale_text

    cfg = base_config(
        char_student,
        teacher={"model": "builtin:arithmetic", "k": 2, "max_tokens": 120},
        task={"name": "arithmetic", "unlabeled_size": 8, "eval_size": 4},
        selection={"strategies": ["llkd"], "sizes": [4]},
        training={"target": "rationale"},
        evaluation={"n": 2, "k": [2], "teacher": False},
    )
    run_dir = tmp_path / "run"
    s = distill(cfg, run_dir, progress=False).summary
    labels = {r["prompt_id"]: r for r in read_jsonl(run_dir / "labels.jsonl")}
    selected = read_jsonl(run_dir / "variants" / "llkd-4" / "selection.jsonl")
    rows = read_jsonl(run_dir / "variants" / "llkd-4" / "train_rows.jsonl")
    by_question = {r["prompt"][-1]["content"]: r["prompt_id"] for r in labels.values()}
    predict = [r for r in rows if r["prompt"][-1]["content"].startswith("predict: ")]
    explain = [r for r in rows if r["prompt"][-1]["content"].startswith("explain: ")]
    assert len(predict) + len(explain) == len(rows) and len(predict) == len(selected) == 4
    for r in predict:
        pid = by_question[r["prompt"][-1]["content"][len("predict: ") :]]
        assert r["completion"][0]["content"] == f"The answer is {labels[pid]['teacher_label']}."
    assert explain, "the arithmetic teacher writes worked solutions"
    for r in explain:
        pid = by_question[r["prompt"][-1]["content"][len("explain: ") :]]
        assert r["completion"][0]["content"] == rationale_text(labels[pid]) != ""
        assert "The answer is" not in r["completion"][0]["content"]
    assert s["variants"][0]["train"]["rationale_rows"] == len(explain)
    after = read_jsonl(run_dir / "variants" / "llkd-4" / "eval" / "rollouts.jsonl")
    before = read_jsonl(run_dir / "eval" / "student_before" / "rollouts.jsonl")
    assert after and all(r["prompt"][-1]["content"].startswith("predict: ") for r in after)
    assert before and not any(r["prompt"][-1]["content"].startswith("predict: ") for r in before)
    assert_no_gold_keys(run_dir)


@pytest.mark.slow
def test_gkd_training_through_distill(tmp_path, char_student, bpe_student):
    """training.method=gkd trains the student towards the teacher's token distributions (TRL's GKD
    trainer); a student with another tokenizer is refused before the run folder is made."""
    from selfimprove.distill import distill
    from selfimprove.errors import InputError
    from selfimprove.train.adapters import read_adapter_meta

    cfg = base_config(
        char_student,
        task={"name": "string_ops", "unlabeled_size": 8, "eval_size": 4},
        selection={"strategies": ["confidence"], "sizes": [4]},
        training={"method": "gkd", "trl": {"beta": 0.0}},
        evaluation={"n": 2, "k": [2]},
    )
    run_dir = tmp_path / "run"
    s = distill(cfg, run_dir, progress=False).summary
    v = s["variants"][0]
    assert v["train"]["steps"] == 2 and v["train"]["loss_first"] > 0
    meta = read_adapter_meta(run_dir / "variants" / "confidence-4" / "adapter")
    assert meta["method"] == "gkd" and meta["config"]["args"]["beta"] == 0.0
    assert meta["config"]["teacher"].endswith("string_ops")
    assert "pass@1" in v["evaluate"]
    with pytest.raises(InputError, match=r"training.method: token-level distillation \(GKD\) needs"):
        distill(base_config(bpe_student, training={"method": "gkd"}), tmp_path / "bpe", progress=False)
    assert not (tmp_path / "bpe").exists()


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path, char_student):
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    cfg = base_config(
        char_student,
        task={"unlabeled_size": 40},
        teacher={"batch_size": 2},
        selection={"strategies": ["all"], "sizes": [None]},
        training={"max_steps": 1},
        evaluation={"enabled": False},
    )
    cfg_path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "selfimprove.cli",
        "distill",
        str(cfg_path),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    rollouts = run_dir / "teacher" / "rollouts.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if rollouts.exists() and len(rollouts.read_text().splitlines()) >= 16:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = rollouts.read_text().splitlines()
    assert 16 <= len(before) < 160, "killed too late: the labelling had finished"
    state = json.loads((run_dir / "state.json").read_text())
    assert "label" not in state["rounds"].get("0", {}).get("done", [])
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = rollouts.read_text().splitlines()
    assert len(after) == 160
    whole = len(before) - len(before) % 4  # whole groups survive the kill untouched
    assert after[:whole] == before[:whole]
    keys = [(json.loads(x)["prompt_id"], json.loads(x)["sample_index"]) for x in after]
    assert len(set(keys)) == 160
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["resumed"] for s in manifest["starts"]] == [False, True]
    assert json.loads((run_dir / "state.json").read_text())["finished"] is True


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing computed lost
# ---------------------------------------------------------------------------------------------


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    from selfimprove.cli import main

    status = main(["distill", *args, "--no-progress"])
    return status, capsys.readouterr().err


@pytest.mark.slow
def test_bad_input_is_one_line_with_the_key(tmp_path, capsys, char_student, tiny_model_dir):
    import yaml

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(base_config(char_student, evaluation={"enabled": False})))

    def error_line(err: str) -> str:
        lines = [x for x in err.splitlines() if "error:" in x]
        assert len(lines) == 1, err
        return lines[0]

    status, err = run_cli(
        [str(cfg_path), "budget.teacher_calls=0", "--run-dir", str(tmp_path / "b0")], capsys
    )
    assert status == 2 and "budget.teacher_calls: 0 teacher samples" in error_line(err)
    assert not (tmp_path / "b0").exists()
    status, err = run_cli(
        [str(cfg_path), "student.model=/no/such/model", "--run-dir", str(tmp_path / "s")], capsys
    )
    assert status == 2 and "student.model: model folder not found: /no/such/model" in error_line(err)
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    status, err = run_cli(
        [str(cfg_path), f"student.model={not_a_model}", "--run-dir", str(tmp_path / "s")], capsys
    )
    assert status == 2 and "student.model:" in error_line(err) and "config.json is missing" in err
    assert not (tmp_path / "s").exists()
    status, err = run_cli(
        [str(cfg_path), "selection.treshold=fixed", "--run-dir", str(tmp_path / "s")], capsys
    )
    assert status == 2 and "did you mean 'threshold'" in err
    # a teacher whose samples hold no parseable answer (a random model): exit 2, its samples kept
    status, err = run_cli(
        [
            str(cfg_path),
            f"teacher.model={tiny_model_dir}",
            "teacher.max_tokens=4",
            "--run-dir",
            str(tmp_path / "t"),
        ],
        capsys,
    )
    line = error_line(err)
    assert status == 2 and "the teacher gave no answer" in line and "answer_is" in line
    assert len(read_jsonl(tmp_path / "t" / "teacher" / "rollouts.jsonl")) == 24 * 4
    # everything filtered out: a reported empty result, no crash, the labels kept
    status, err = run_cli(
        [
            str(cfg_path),
            "selection.strategies=[llkd]",
            "selection.sizes=[null]",
            "selection.threshold=fixed",
            "selection.fixed_confidence=2.0",
            "--run-dir",
            str(tmp_path / "f"),
        ],
        capsys,
    )
    assert status == 0 and "kept nothing" in err and "llkd-auto" in err
    results = json.loads((tmp_path / "f" / "results.json").read_text())
    (variant,) = results["variants"]
    assert variant["select"]["selected"] == 0 and "skipped" in variant["train"]
    assert not (tmp_path / "f" / "variants" / "llkd-auto" / "adapter").exists()
    assert len(read_jsonl(tmp_path / "f" / "labels.jsonl")) == 24


# ---------------------------------------------------------------------------------------------
# vLLM
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(1800)
def test_distill_end_to_end_vllm(tmp_path, char_student):
    """The teacher on vLLM (log-probabilities from the engine), the student's evaluation on HF.

    One engine per test: two engine starts in one test took more than 15 minutes on a loaded
    2-core machine. Serving a student's adapter on vLLM is tested in tests/test_generate_vllm.py.
    """
    pytest.importorskip("vllm")
    from selfimprove.distill import distill
    from selfimprove.tasks import get_task

    engine = {"enforce_eager": True, "max_model_len": 512, "kv_cache_gb": 1}
    cfg = base_config(
        char_student,
        teacher={"backend": "vllm", "options": engine},
        selection={"strategies": ["random", "llkd"], "sizes": [6]},
    )
    run_dir = tmp_path / "run"
    s = distill(cfg, run_dir, progress=False).summary
    task = get_task("string_ops", instruction=False)
    assert (
        s["label"]["labelled"] > 0 and s["label"]["label_prob_share"] == 1.0
    )  # vLLM returns log-probabilities
    assert s["teacher"]["pass@1"] == pytest.approx(recomputed_pass1(run_dir, "eval/teacher", task))
    assert s["teacher"]["pass@1"] > s["student_before"]["pass@1"]
    for v in s["variants"]:
        assert v["select"]["selected"] == 6 and v["train"]["steps"] == 2
        recs = read_jsonl(run_dir / "variants" / v["key"] / "eval" / "rollouts.jsonl")
        assert recs and all(r["adapter"].endswith("adapter") for r in recs)
        assert v["evaluate"]["pass@1"] == pytest.approx(
            recomputed_pass1(run_dir / "variants" / v["key"], "eval", task)
        )
    assert_no_gold_keys(run_dir)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(1800)
def test_distill_student_evaluated_on_vllm(tmp_path, char_student):
    """The student's evaluation on vLLM (student.backend=vllm): the base student, then each trained
    adapter served by the same engine; the numbers are recomputed from the stored samples and the
    adapters really change what is generated."""
    pytest.importorskip("vllm")
    from selfimprove.distill import distill
    from selfimprove.tasks import get_task

    engine = {"enforce_eager": True, "max_model_len": 512, "kv_cache_gb": 1}
    cfg = base_config(
        char_student,
        student={"backend": "vllm", "options": engine},
        selection={"strategies": ["random", "confidence"], "sizes": [6]},
        training={"max_steps": 4, "learning_rate": 0.05},
    )
    run_dir = tmp_path / "run"
    s = distill(cfg, run_dir, progress=False).summary
    task = get_task("string_ops", instruction=False)
    before = read_jsonl(run_dir / "eval" / "student_before" / "rollouts.jsonl")
    assert before and all(r["backend"] == "vllm" and r["adapter"] is None for r in before)
    assert s["student_before"]["pass@1"] == pytest.approx(
        recomputed_pass1(run_dir, "eval/student_before", task)
    )
    texts_before = sorted(r["completion"] for r in before)
    for v in s["variants"]:
        recs = read_jsonl(run_dir / "variants" / v["key"] / "eval" / "rollouts.jsonl")
        assert recs and all(r["backend"] == "vllm" and r["adapter"].endswith("adapter") for r in recs)
        assert v["evaluate"]["pass@1"] == pytest.approx(
            recomputed_pass1(run_dir / "variants" / v["key"], "eval", task)
        )
        assert sorted(r["completion"] for r in recs) != texts_before  # the adapter was applied
