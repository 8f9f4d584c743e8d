"""The embedded base model: built from scratch, cached, reused, deterministic (tiny settings)."""

from __future__ import annotations

import json

import pytest

from selfimprove.errors import InputError
from selfimprove.models.base_model import (
    INFO_FILE,
    BaseModelSettings,
    build_base_model,
    default_base_dir,
    read_info,
)

TINY = BaseModelSettings(
    task="counting",
    steps=4,
    batch_size=8,
    n_examples=64,
    warmup_steps=2,
    eval_prompts=4,
    eval_samples=2,
    max_new_tokens=8,
)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_settings_digest_and_unknown_keys():
    assert TINY.digest() == BaseModelSettings(**json.loads(json.dumps(TINY.__dict__))).digest()
    assert TINY.digest() != BaseModelSettings(**{**TINY.__dict__, "steps": 5}).digest()
    assert TINY.digest() == BaseModelSettings(**{**TINY.__dict__, "eval_prompts": 9}).digest()
    assert TINY.digest() != BaseModelSettings(**{**TINY.__dict__, "slip_rate": 0.5}).digest()
    assert TINY.digest() != BaseModelSettings(**{**TINY.__dict__, "precision": "bf16"}).digest()
    with pytest.raises(InputError, match="unknown base-model setting"):
        BaseModelSettings.from_dict({"stepz": 3})


def test_late_demonstrations_replace_the_rows_from_their_step_on():
    """The slipped corpus is what the model sees from ``late_from`` on (same prompts, row by row)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from selfimprove.models.base_model import train_on_demonstrations
    from selfimprove.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer(template="compact")
    assert tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False) == "q\n"
    prompt = [{"role": "user", "content": "Say it."}]
    clean, late = [{"prompt": prompt, "completion": "A"}], [{"prompt": prompt, "completion": "B"}]
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=64,
    )  # fmt: skip

    def p_of(model, letter):
        ids = tok(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False))["input_ids"]
        with torch.no_grad():
            probs = model(torch.tensor([ids])).logits[0, -1].softmax(-1)
        return probs[tok.convert_tokens_to_ids(letter)].item()

    for late_from, winner in ((30, "A"), (0, "B")):
        model = Qwen2ForCausalLM(cfg)
        seen = []
        losses = train_on_demonstrations(
            model, tok, clean, steps=30, batch_size=1, lr=1e-2, progress=False,
            late_demos=late, late_from=late_from, on_step=lambda step, loss, seen=seen: seen.append((step, loss)),
        )  # fmt: skip
        assert seen == list(zip(range(1, 31), losses, strict=True))
        loser = "B" if winner == "A" else "A"
        assert p_of(model, winner) > 0.5 > p_of(model, loser)
    with pytest.raises(ValueError, match="late_demos has 2 rows"):
        train_on_demonstrations(
            Qwen2ForCausalLM(cfg), tok, clean, steps=1, batch_size=1, lr=1e-3, progress=False,
            late_demos=late * 2,
        )  # fmt: skip


def test_open_ended_clean_phase_ends_when_ready_then_anneals_on_the_slipped_rows():
    """With ``ready`` the clean phase lasts until the model is competent (or the cap), then the
    fixed number of slipped steps follows; the lr is flat at the peak until then, then decays."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from selfimprove.models.base_model import train_on_demonstrations
    from selfimprove.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer(template="compact")
    prompt = [{"role": "user", "content": "Say it."}]
    clean, late = [{"prompt": prompt, "completion": "A"}], [{"prompt": prompt, "completion": "B"}]
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=64,
    )  # fmt: skip

    class Spy(torch.optim.AdamW):
        lrs: list[float] = []

        def step(self, *a, **k):
            Spy.lrs.append(self.param_groups[0]["lr"])
            return super().step(*a, **k)

    for answer_at, cap, expect_clean in ((12, 40, 12), (None, 16, 16)):
        asked = []

        def ready(step, asked=asked, answer_at=answer_at):
            asked.append(step)
            return answer_at is not None and step >= answer_at

        Spy.lrs = []
        model = Qwen2ForCausalLM(cfg)
        orig = torch.optim.AdamW
        torch.optim.AdamW = Spy
        try:
            losses = train_on_demonstrations(
                model, tok, clean, steps=10, batch_size=1, lr=1e-2, warmup_steps=2, progress=False,
                late_demos=late, late_from=6, ready=ready, ready_every=4, max_clean_steps=cap,
            )  # fmt: skip
        finally:
            torch.optim.AdamW = orig
        # 4 slipped steps (steps - late_from) follow the clean phase, wherever it ended.
        assert len(losses) == expect_clean + 4
        assert asked == list(range(4, expect_clean + 1, 4))
        assert Spy.lrs[:2] == [5e-3, 1e-2] and set(Spy.lrs[2:expect_clean]) == {1e-2}
        tail = Spy.lrs[expect_clean:]
        assert tail[0] == pytest.approx(1e-2) and all(a > b for a, b in zip(tail, tail[1:], strict=False))
    with pytest.raises(ValueError, match="max_clean_steps"):
        train_on_demonstrations(
            Qwen2ForCausalLM(cfg), tok, clean, steps=2, batch_size=1, lr=1e-3, progress=False,
            ready=lambda step: True,
        )  # fmt: skip


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    from selfimprove.models.base_model import build_key

    monkeypatch.setenv("SELFIMPROVE_CACHE", str(tmp_path))
    assert default_base_dir(TINY) == tmp_path / f"base-counting-{build_key(TINY)}"


def test_build_key_covers_what_changes_the_weights(monkeypatch):
    """A build without AMX (auto -> fp32) and one forced to bf16 get different cache folders; so do
    two CPUs whose kernels differ, and two thread counts."""
    import torch

    from selfimprove.models import base_model
    from selfimprove.models.base_model import build_environment, build_key

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    auto = BaseModelSettings(**{**TINY.__dict__, "precision": "auto", "threads": 1})
    bf16 = BaseModelSettings(**{**TINY.__dict__, "precision": "bf16", "threads": 1})
    assert build_environment(auto)["precision_used"] == "fp32"
    assert build_environment(bf16)["precision_used"] == "bf16"
    assert default_base_dir(auto) != default_base_dir(bf16)
    key_no_amx = build_key(auto)
    # the same settings on a CPU with AMX resolve to bf16: another folder
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert build_environment(auto)["precision_used"] == "bf16" and build_key(auto) != key_no_amx
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert build_key(auto) == key_no_amx  # deterministic on one machine
    # other vector kernels (AVX2 vs AVX-512) or another thread count: another folder
    monkeypatch.setattr(base_model, "cpu_capability", lambda: "AVX2")
    assert build_key(auto) != key_no_amx
    monkeypatch.undo()
    assert build_key(BaseModelSettings(**{**TINY.__dict__, "threads": 2})) != build_key(
        BaseModelSettings(**{**TINY.__dict__, "threads": 1})
    )


def test_shipped_base_models_match_their_digests_and_recipes():
    """Every shipped model's files hash to the digest in index.json, it is competent, and its
    recorded settings are the task's recommended recipe (what `build-base` rebuilds)."""
    from selfimprove.models.base_model import (
        MODEL_FILES,
        SHIPPED_DIR,
        content_digest,
        recommended_settings,
        shipped_base_model,
        shipped_index,
    )
    from selfimprove.tasks import TASKS

    index = shipped_index()
    assert "string_ops" in index  # the demo's model ships
    assert set(index) <= set(TASKS)
    for task, entry in index.items():
        folder = shipped_base_model(task)
        assert folder == SHIPPED_DIR / task
        assert content_digest(folder) == entry["content_digest"]
        assert sorted(p.name for p in folder.iterdir()) == sorted([*MODEL_FILES, INFO_FILE])
        info = read_info(folder)
        assert info["competent"] is True and info["metrics"]["n_prompts"] >= 100
        expected = recommended_settings(task, eval_prompts=info["settings"]["eval_prompts"])
        assert info["settings"] == expected.__dict__ and info["digest"] == expected.digest()
        assert (folder / "model.safetensors").stat().st_size < 8_000_000


def test_builtin_resolves_to_the_shipped_model_without_a_build(monkeypatch):
    from selfimprove.models import base_model
    from selfimprove.models.loading import resolve_model

    def no_build(*args, **kwargs):
        raise AssertionError("builtin:string_ops must not build")

    monkeypatch.setattr(base_model, "build_base_model", no_build)
    assert resolve_model("builtin:string_ops") == str(base_model.SHIPPED_DIR / "string_ops")
    with pytest.raises(InputError, match="unknown task"):
        resolve_model("builtin:algebra")


def test_a_damaged_shipped_model_is_refused(tmp_path):
    import shutil

    from selfimprove.models.base_model import SHIPPED_DIR, SHIPPED_INDEX, shipped_base_model

    root = tmp_path / "base_models"
    root.mkdir()
    shutil.copytree(SHIPPED_DIR / "string_ops", root / "string_ops")
    shutil.copyfile(SHIPPED_DIR / SHIPPED_INDEX, root / SHIPPED_INDEX)
    assert shipped_base_model("string_ops", root) == root / "string_ops"
    cfg = root / "string_ops" / "config.json"
    cfg.write_text(cfg.read_text().replace('"num_hidden_layers": 4', '"num_hidden_layers": 3'))
    with pytest.raises(InputError, match="does not match its recorded digest"):
        shipped_base_model("string_ops", root)
    assert shipped_base_model("sorting", tmp_path / "nothing") is None


@pytest.mark.slow
def test_build_writes_loads_reuses_and_is_deterministic(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("SELFIMPROVE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    path = build_base_model(TINY, progress=False)
    assert path == default_base_dir(TINY)
    info = read_info(path)
    assert info["digest"] == TINY.digest() and info["settings"]["steps"] == 4
    m = info["metrics"]
    assert set(m) >= {"pass@1", "maj@2", "pass@2", "answer_rate"} and m["n_samples"] == 8
    assert 0.0 <= m["pass@1"] <= m["pass@2"] <= 1.0
    assert info["final_loss"] == info["final_loss"] and info["final_loss"] > 0  # finite
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    # no temporary folders left behind
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    model = AutoModelForCausalLM.from_pretrained(str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    assert model.config.head_dim == 64
    # training moved the weights away from the fresh initialisation
    from selfimprove.models.tiny import build_tiny_model

    fresh = build_tiny_model(
        tmp_path / "fresh", hidden_size=128, num_layers=2, num_heads=2, max_position_embeddings=512, seed=0
    )
    w0, w1 = _weights(fresh), _weights(path)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert model(**tok(ids, return_tensors="pt")).logits.shape[-1] == len(tok)

    # second call: reused as is (same files, same mtime)
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert build_base_model(TINY, progress=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime

    # determinism: the same settings in another folder give identical weights
    other = build_base_model(TINY, tmp_path / "again", progress=False)
    w2 = _weights(other)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)

    # other settings into an existing folder need --force; force rebuilds atomically
    changed = BaseModelSettings(**{**TINY.__dict__, "steps": 2})
    with pytest.raises(InputError, match="other settings"):
        build_base_model(changed, tmp_path / "again", progress=False)
    build_base_model(changed, tmp_path / "again", force=True, progress=False)
    assert read_info(tmp_path / "again")["settings"]["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "cache", "fresh"]


@pytest.mark.slow
def test_bf16_build_trains_deterministically_and_saves_a_plain_fp32_model(tmp_path):
    """precision=bf16: autocast forward/backward, float32 weights; a model like any other."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    bf16 = BaseModelSettings(**{**TINY.__dict__, "precision": "bf16"})
    a = build_base_model(bf16, tmp_path / "a", progress=False)
    b = build_base_model(bf16, tmp_path / "b", progress=False)
    c = build_base_model(TINY, tmp_path / "c", progress=False)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(w.dtype == torch.float32 for w in wa.values())
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # reproducible
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)  # other arithmetic than the fp32 build
    info = read_info(a)
    assert info["settings"]["precision"] == "bf16" and info["precision_used"] == "bf16"
    assert info["final_loss"] > 0
    assert read_info(c)["precision_used"] == "fp32"
    # eager attention was a training choice only: the saved config keeps the default
    cfg = json.loads((a / "config.json").read_text())
    assert cfg.get("_attn_implementation") in (None, "sdpa")
    assert AutoModelForCausalLM.from_pretrained(str(a)).config._attn_implementation == "sdpa"


def test_auto_precision_follows_the_cpu(monkeypatch):
    import torch

    from selfimprove.models.base_model import resolve_precision

    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_precision("auto") == "fp32"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert resolve_precision("auto") == "fp32"


def test_refuses_foreign_folder_and_unknown_task(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a base-model folder"):
        build_base_model(TINY, tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="unknown task 'algebra'"):
        build_base_model(BaseModelSettings(task="algebra"), tmp_path / "y", progress=False)
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "x" / INFO_FILE).exists()


@pytest.mark.slow
def test_cli_build_base(tmp_path, capsys):
    from selfimprove.cli import main

    out = tmp_path / "m"
    rc = main(
        [
            "build-base",
            "--task",
            "sorting",
            "--steps",
            "2",
            "--clean-target",  # a fixed schedule: no competence probe, so the build is usable
            "0",
            "--eval-prompts",
            "2",
            "--out",
            str(out),
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "pass@1" in printed
    assert read_info(out)["settings"]["task"] == "sorting"
    # Train until competent: an untrained model never reaches 100% on the probes, so the clean
    # phase runs to its cap, then the slipped steps follow, and the build says plainly that the
    # result is not a usable base model (exit 1); loading it as a model is refused.
    args = ["build-base", "--task", "sorting", "--steps", "4", "--eval-prompts", "0", "--out", str(out)]
    assert main([*args, "--clean-target", "1.0", "--max-clean-steps", "3", "--force", "--threads", "1"]) == 1
    info = read_info(out)
    assert info["settings"]["clean_target"] == 1.0 and info["competent"] is False
    slipped = 4 - int(4 * info["settings"]["slip_from"])
    assert info["clean_steps"] == 3 and info["steps_done"] == 3 + slipped
    assert [p["step"] for p in info["probes"]] == [3] and info["probes"][0]["greedy"] < 1.0
    err = capsys.readouterr().err
    assert "NOT a usable base model" in err and "below --clean-target 1.0" in err
    from selfimprove.models.loading import resolve_model

    with pytest.raises(InputError, match="is not a usable base model"):
        resolve_model(str(out))
    # the demo refuses to present it as a result, before creating its run folder
    demo_out = tmp_path / "demo"
    assert main(["demo", "--set", f"model.path={out}", "--out", str(demo_out), "--no-progress"]) == 2
    assert "is not a usable base model" in capsys.readouterr().err and not demo_out.exists()
    assert main(["build-base", "--task", "sorting", "--hidden-size", "100"]) == 2
    assert main(["build-base", "--task", "sorting", "--layers", "0"]) == 2


@pytest.mark.slow
def test_cli_build_base_keeps_the_recommended_depth(tmp_path):
    """Options not given keep the task's recommended values: the folder `builtin:<task>` would use."""
    import torch

    from selfimprove.cli import main
    from selfimprove.models.base_model import RECOMMENDED, recommended_settings

    out = tmp_path / "s"
    # string_ops trains until competent; cap that phase at 2 steps so the test stays short
    args = ["build-base", "--task", "string_ops", "--steps", "2", "--max-clean-steps", "2"]
    args += ["--eval-prompts", "0", "--out", str(out)]
    # 2 clean steps never reach the target: the build finishes but is not usable (exit 1)
    assert main(args) == 1  # the recommended thread count (1) is a setting like the others
    info = read_info(out)
    assert info["settings"]["num_layers"] == RECOMMENDED["string_ops"]["num_layers"] == 4
    assert info["settings"]["clean_target"] == RECOMMENDED["string_ops"]["clean_target"] > 0
    assert info["clean_steps"] == 2 and info["competent"] is False
    expected = recommended_settings("string_ops", steps=2, max_clean_steps=2, eval_prompts=0)
    assert info["digest"] == expected.digest()
    assert info["threads_used"] == 1 == RECOMMENDED["string_ops"]["threads"]
    assert info["settings"]["seed"] == RECOMMENDED["string_ops"]["seed"]  # not the CLI's
    assert info["settings"]["precision"] == RECOMMENDED["string_ops"]["precision"]
    before = torch.get_num_threads()
    assert main([*args, "--layers", "3", "--threads", "2", "--force"]) == 1
    assert torch.get_num_threads() == before  # the build's thread count does not leak out
    info3 = read_info(out)
    assert info3["settings"]["num_layers"] == 3 and info3["threads_used"] == 2
    assert info3["settings"]["threads"] == 2 and info3["cpu"]


def test_recommended_settings_per_task_and_overrides():
    from selfimprove.models.base_model import RECOMMENDED, recommended_settings

    assert set(RECOMMENDED) >= {"arithmetic", "counting", "sorting", "string_ops"}
    s = recommended_settings("counting")
    assert s.task == "counting" and s.steps == RECOMMENDED["counting"]["steps"]
    assert recommended_settings("counting", steps=3).steps == 3
    with pytest.raises(InputError, match="unknown base-model setting"):
        recommended_settings("counting", stepz=3)
    assert recommended_settings("string_ops").num_layers == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"slip_from": 1.5}, "slip_from must be in"),
        ({"slip_rate": 1.0}, "slip_rate must be in"),
        ({"hidden_size": 192}, "hidden_size must be 64 x num_heads"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"clean_target": 1.5}, "clean_target must be in"),
        ({"probe_every": 0}, "probe_every must be >= 1"),
        ({"threads": -1}, "threads must be >= 0"),
        ({"precision": "fp16"}, "precision must be one of fp32, bf16, auto"),
    ],
)
def test_base_model_settings_are_validated(override, message):
    from selfimprove.models.base_model import recommended_settings

    with pytest.raises(InputError, match=message):
        recommended_settings("sorting", **override)


def test_stale_temp_folders_of_dead_builds_are_removed(tmp_path):
    from selfimprove.models.base_model import remove_stale_temps

    target = tmp_path / "m"
    dead = tmp_path / ".m.tmp-999999999"  # no such process
    alive = tmp_path / f".m.tmp-{__import__('os').getpid()}"
    other = tmp_path / ".other.tmp-999999999"
    for d in (dead, alive, other):
        d.mkdir()
    remove_stale_temps(target)
    assert not dead.exists() and alive.exists() and other.exists()


@pytest.mark.slow
def test_build_base_on_a_user_jsonl_task(tmp_path, capsys):
    """`build-base --task FILE.jsonl` trains on the file's base rows and measures on its eval rows."""
    from transformers import AutoModelForCausalLM

    from selfimprove.cli import main
    from selfimprove.models.base_model import recommended_settings

    words = ["abc", "dog", "cat", "sun", "map", "pen", "cup", "box", "hat", "jam", "kit", "log"]
    rows = [{"prompt": f"Reverse '{w}'.", "answer": w[::-1], "split": "base"} for w in words]
    rows += [{"prompt": f"Reverse '{w}'.", "answer": w[::-1], "split": "eval"} for w in ("xyz", "qrs")]
    path = tmp_path / "reverse.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "m"
    args = ["build-base", "--task", str(path), "--steps", "4", "--clean-target", "0", "--layers", "1"]
    assert main([*args, "--eval-prompts", "2", "--out", str(out), "--threads", "1"]) == 0
    info = read_info(out)
    assert info["settings"]["task"] == str(path) and info["competent"] is True
    assert info["metrics"]["n_prompts"] == 2.0  # the file's two eval rows
    assert "pass@1" in capsys.readouterr().out
    assert AutoModelForCausalLM.from_pretrained(str(out)).config.num_hidden_layers == 1
    # the file's rows are part of the recipe: another file, another digest
    s = recommended_settings(str(path), steps=4, clean_target=0.0, num_layers=1)
    before = s.digest()
    path.write_text(path.read_text().replace("dog", "fog"))
    assert s.digest() != before


def test_trainers_load_builtin_models_and_only_safetensors(tmp_path):
    """The trainers' loader (students, policies and GKD's teacher) resolves `builtin:<task>` and
    never reads pickle weights, even where a safetensors file sits beside them."""
    import shutil

    import torch

    from selfimprove.models.base_model import SHIPPED_DIR
    from selfimprove.train.common import load_model_and_tokenizer

    model, tokenizer, name = load_model_and_tokenizer("builtin:string_ops", None)
    assert name == str(SHIPPED_DIR / "string_ops") and tokenizer.pad_token is not None
    folder = tmp_path / "m"
    shutil.copytree(SHIPPED_DIR / "string_ops", folder)
    # A pickle file that would change every weight if it were read.
    torch.save({k: torch.zeros_like(v) for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    loaded, _, _ = load_model_and_tokenizer(folder, None)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match="safetensors"):
        load_model_and_tokenizer(folder, None)
