"""Rollout store, prompt loader and generate_rollouts (pure: a scripted generator, no engine)."""

from __future__ import annotations

import json

import pytest

from selfimprove.errors import InputError
from selfimprove.generate.base import Completion, Sampling
from selfimprove.generate.store import RolloutStore, generate_rollouts, load_prompts


class ScriptedGenerator:
    """Returns deterministic completions and records which prompts it was asked for."""

    backend = "scripted"
    model = "scripted-model"

    def __init__(self):
        self.calls: list[list] = []

    def generate(self, prompts, sampling, *, adapter=None, progress=False):
        self.calls.append(list(prompts))
        return [
            [Completion(f"{p}|{k}|{adapter}", "stop", len(str(p)), k + 1) for k in range(sampling.n)]
            for p in prompts
        ]

    def close(self):
        pass


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_load_prompts_fields_ids_and_meta(tmp_path):
    f = write(
        tmp_path / "p.jsonl",
        '{"prompt": "a", "id": 7, "topic": "x"}\n\n{"prompt": [{"role": "user", "content": "hi"}]}\n',
    )
    recs = load_prompts(f)
    assert recs == [
        {"prompt_id": "7", "prompt": "a", "meta": {"topic": "x"}},
        # no id: the 1-based line number (blank lines count)
        {"prompt_id": "3", "prompt": [{"role": "user", "content": "hi"}], "meta": {}},
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "a"}\n{"prompt": \n', "p.jsonl:2: invalid JSON"),
        ('["a"]\n', "p.jsonl:1: expected a JSON object"),
        ('{"text": "a"}\n', "p.jsonl:1: missing field 'prompt'"),
        ('{"prompt": 3}\n', "p.jsonl:1: prompt 1: expected a string"),
        ('{"prompt": [{"content": "x"}]}\n', "p.jsonl:1: prompt 1, message 0"),
        (
            '{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n',
            "p.jsonl:2: duplicate id 'x' (first on line 1)",
        ),
        ('{"prompt": "a", "id": [1]}\n', "p.jsonl:1: 'id' must be"),
        ("\n\n", "holds no prompts"),
        ("", "holds no prompts"),
    ],
)
def test_load_prompts_errors_name_file_and_line(tmp_path, text, message):
    f = write(tmp_path / "p.jsonl", text)
    with pytest.raises(InputError) as exc:
        load_prompts(f)
    assert message in str(exc.value)


def test_load_prompts_missing_file(tmp_path):
    with pytest.raises(InputError, match="prompt file not found: .*nope.jsonl"):
        load_prompts(tmp_path / "nope.jsonl")


def test_generate_rollouts_schema_and_resume(tmp_path):
    recs = [{"prompt_id": str(i), "prompt": f"p{i}", "meta": {"k": i}} for i in range(5)]
    store = RolloutStore(tmp_path / "round_0")
    gen = ScriptedGenerator()
    rows = generate_rollouts(
        gen, recs[:3], Sampling(n=2), store, adapter="ad", adapter_version="v1", batch_size=2, progress=False
    )
    assert [c for c in gen.calls] == [["p0", "p1"], ["p2"]]
    assert len(rows) == 6
    assert rows[1] == {
        "prompt_id": "0",
        "prompt": "p0",
        "sample_index": 1,
        "completion": "p0|1|ad",
        "finish_reason": "stop",
        "prompt_tokens": 2,
        "completion_tokens": 2,
        "model": "scripted-model",
        "adapter": "ad",
        "adapter_version": "v1",
        "backend": "scripted",
        "meta": {"k": 0},
    }
    before = store.path.read_bytes()
    gen2 = ScriptedGenerator()
    rows = generate_rollouts(gen2, recs, Sampling(n=2), RolloutStore(store.dir), batch_size=8, progress=False)
    assert gen2.calls == [["p3", "p4"]]  # finished prompts are not regenerated
    assert store.path.read_bytes().startswith(before)  # earlier rollouts kept byte for byte
    assert [r["prompt_id"] for r in rows] == ["0", "0", "1", "1", "2", "2", "3", "3", "4", "4"]


def test_torn_last_line_is_truncated_on_open(tmp_path):
    store = RolloutStore(tmp_path)
    generate_rollouts(
        ScriptedGenerator(), [{"prompt_id": "a", "prompt": "x"}], Sampling(n=2), store, progress=False
    )
    good = store.path.read_bytes()
    with open(store.path, "ab") as fh:  # what kill -9 in the middle of a write leaves behind
        fh.write(b'{"prompt_id": "b", "prompt": "y", "sam')
    reopened = RolloutStore(tmp_path)
    assert reopened.path.read_bytes() == good
    assert [r["prompt_id"] for r in reopened.records()] == ["a", "a"]


def test_partial_group_is_dropped_and_regenerated(tmp_path):
    store = RolloutStore(tmp_path)
    lines = [
        {"prompt_id": "a", "sample_index": 0},
        {"prompt_id": "a", "sample_index": 1},
        {"prompt_id": "b", "sample_index": 0},  # group b cut short by a crash
    ]
    store.path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    gen = ScriptedGenerator()
    recs = [{"prompt_id": "a", "prompt": "pa"}, {"prompt_id": "b", "prompt": "pb"}]
    rows = generate_rollouts(gen, recs, Sampling(n=2), RolloutStore(tmp_path), progress=False)
    assert gen.calls == [["pb"]]
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    store = RolloutStore(tmp_path)
    store.path.write_text('{"prompt_id": "a"}\nnot json\n{"prompt_id": "b"}\n')
    with pytest.raises(InputError, match=r"rollouts.jsonl:2: corrupt rollout line"):
        store.records()


def test_generate_rollouts_rejects_duplicate_ids(tmp_path):
    recs = [{"prompt_id": "a", "prompt": "x"}, {"prompt_id": "a", "prompt": "y"}]
    with pytest.raises(InputError, match="duplicate prompt_id 'a'"):
        generate_rollouts(ScriptedGenerator(), recs, Sampling(), RolloutStore(tmp_path), progress=False)
    assert not RolloutStore(tmp_path).records()


def test_generate_rollouts_starts_the_engine_only_for_unfinished_prompts(tmp_path):
    recs = [{"prompt_id": str(i), "prompt": f"p{i}"} for i in range(3)]
    built: list[ScriptedGenerator] = []

    def engine():
        built.append(ScriptedGenerator())
        return built[-1]

    store = RolloutStore(tmp_path / "r")
    rows = generate_rollouts(engine, recs, Sampling(n=2), store, progress=False)
    assert len(built) == 1 and built[0].calls == [["p0", "p1", "p2"]] and len(rows) == 6
    again = generate_rollouts(engine, recs, Sampling(n=2), RolloutStore(store.dir), progress=False)
    assert len(built) == 1  # every prompt finished: the engine function is not called
    assert again == rows


def test_generate_rollouts_records_the_adapter_folder_fingerprint(tmp_path):
    from selfimprove.generate import adapter_fingerprint

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-v1")
    recs = [{"prompt_id": "0", "prompt": "p0"}]
    rows = generate_rollouts(
        ScriptedGenerator(),
        recs,
        Sampling(n=1),
        RolloutStore(tmp_path / "a"),
        adapter=str(adapter),
        progress=False,
    )
    assert rows[0]["adapter_version"] == adapter_fingerprint(adapter)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-v2")
    rows = generate_rollouts(
        ScriptedGenerator(),
        recs,
        Sampling(n=1),
        RolloutStore(tmp_path / "b"),
        adapter=str(adapter),
        progress=False,
    )
    assert rows[0]["adapter_version"] == adapter_fingerprint(adapter) != ""
    # A served adapter name (no folder here) is recorded without a fingerprint.
    rows = generate_rollouts(
        ScriptedGenerator(),
        recs,
        Sampling(n=1),
        RolloutStore(tmp_path / "c"),
        adapter="served-lora",
        progress=False,
    )
    assert rows[0]["adapter"] == "served-lora" and rows[0]["adapter_version"] is None


def test_engine_pool_builds_lazily_closes_only_its_own(tmp_path, monkeypatch):
    import selfimprove.generate as generate
    from selfimprove.generate.pool import EnginePool

    class Closable(ScriptedGenerator):
        closed = 0

        def close(self):
            self.closed += 1

    built: list[tuple] = []

    def fake_build(backend, model, **options):
        built.append((backend, model, options))
        return Closable()

    monkeypatch.setattr(generate, "build_generator", fake_build)
    mine = Closable()
    logs: list[str] = []
    pool = EnginePool({"policy": mine, "unused": None}, log=logs.append)
    assert pool.get("policy", "vllm", "m") is mine and built == []
    judge = pool.get("judge", "hf", "judge-model", {"dtype": "float32"})
    assert pool.get("judge", "hf", "judge-model") is judge and built == [
        ("hf", "judge-model", {"dtype": "float32"})
    ]
    assert logs == ["starting the hf generator on judge-model"]
    pool.release("judge")
    assert judge.closed == 1 and "judge" not in pool.built
    other = pool.get("judge", "hf", "judge-model")
    assert other is not judge and len(built) == 2
    pool.close()
    assert other.closed == 1 and mine.closed == 0  # a given engine is the caller's to close
