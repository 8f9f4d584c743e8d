"""Run-config validation: typos with suggestions, wrong types, bad values, overrides, file:line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from selfimprove.errors import ConfigError
from selfimprove.loop.config import (
    RunConfig,
    dump_config,
    iter_fields,
    load_config,
    parse_override,
    schema_markdown,
    validate_config,
)

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


# (YAML text, substrings the error must contain)
BAD_YAML = [
    (
        "training:\n  lora:\n    rnak: 8\n",
        ["cfg.yaml:3:", "training.lora.rnak", "unknown key", "did you mean 'rank'", "allowed here"],
    ),
    ("genration:\n  n: 4\n", ["cfg.yaml:1:", "genration", "did you mean 'generation'"]),
    ("generation:\n  n: two\n", ["cfg.yaml:2:", "generation.n", "valid integer", "'two'"]),
    ("generation:\n  backend: vlm\n", ["cfg.yaml:2:", "generation.backend", "'vlm'", "did you mean 'vllm'"]),
    ("loop:\n  rounds: 0\n", ["cfg.yaml:2:", "loop.rounds", "greater than or equal to 1"]),
    ("training:\n  method: ppo\n", ["training.method", "'sft'", "'dpo'", "'grpo'"]),
    ("loop:\n  on_empty_data: continue\n", ["loop.on_empty_data", "'skip'", "'stop'"]),
    ("evaluation:\n  n: 4\n  k: [1, 8]\n", ["evaluation", "1..n=4", "[8]"]),
    ("generation:\n  n: 4\n  n_train: 8\n", ["generation", "n_train (8) cannot exceed n (4)"]),
    ("task:\n  name: null\n", ["task", "task.file"]),
    (
        "scoring:\n  rewards:\n    - name: majority_vote\n      wieght: 2\n",
        ["cfg.yaml:4:", "scoring.rewards[0].wieght", "did you mean 'weight'"],
    ),
    (
        "training:\n  lora:\n    target_modules: 5\n",
        ["training.lora.target_modules", "valid list", "'all-linear'"],
    ),
    (
        "training:\n  method: dpo\n  trl:\n    betta: 0.1\n",
        ["cfg.yaml:4:", "training.trl.betta", "DPOConfig", "did you mean 'beta'"],
    ),
    ("generation:\n  top_p: 0\n", ["generation.top_p", "greater than 0"]),
]


@pytest.mark.parametrize("text,needles", BAD_YAML)
def test_bad_config_messages(tmp_path, text, needles):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_several_problems_reported_at_once(tmp_path):
    path = _write(tmp_path, "generation:\n  n: 0\n  backend: x\nloop:\n  rounds: -1\n")
    msg = str(pytest.raises(ConfigError, load_config, path).value)
    assert "3 problems" in msg
    assert "cfg.yaml:2:" in msg and "cfg.yaml:3:" in msg and "cfg.yaml:5:" in msg


@pytest.mark.parametrize(
    "text,where",
    [
        ("a: [1, 2\n", "cfg.yaml:2:"),
        ("a:\n  b: 1\n c: 2\n", "cfg.yaml:3:"),
        ("- 1\n- 2\n", "mapping of sections"),
    ],
)
def test_malformed_yaml(tmp_path, text, where):
    msg = str(pytest.raises(ConfigError, load_config, _write(tmp_path, text)).value)
    assert where in msg


def test_missing_file(tmp_path):
    msg = str(pytest.raises(ConfigError, load_config, tmp_path / "nope.yaml").value)
    assert "not found" in msg and "nope.yaml" in msg


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, ""))
    assert cfg == RunConfig()
    assert cfg.training.method == "sft" and cfg.generation.n == 8


@pytest.mark.parametrize(
    "text,key,value",
    [
        ("training.lora.rank=4", ("training", "lora", "rank"), 4),
        ("generation.temperature=0.7", ("generation", "temperature"), 0.7),
        ('generation.stop=["\\n", "."]', ("generation", "stop"), ["\n", "."]),
        ("task.name=null", ("task", "name"), None),
        ("loop.guard.enabled=false", ("loop", "guard", "enabled"), False),
        ("name=my run", ("name",), "my run"),
    ],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize("text", ["training.lora.rank", "=3", "a..b=1", "x=[1,"])
def test_bad_override_syntax(text):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert repr(text) in str(info.value)


def test_overrides_applied_and_validated(tmp_path):
    path = _write(tmp_path, "training:\n  lora:\n    rank: 16\n")
    cfg = load_config(path, ["training.lora.rank=4", "loop.rounds=5", "generation.backend=hf"])
    assert cfg.training.lora.rank == 4 and cfg.loop.rounds == 5 and cfg.generation.backend == "hf"
    msg = str(pytest.raises(ConfigError, load_config, path, ["training.lora.rnak=4"]).value)
    assert "command-line override 'training.lora.rnak=4'" in msg and "did you mean 'rank'" in msg
    msg = str(pytest.raises(ConfigError, load_config, path, ["training.lora.rank=abc"]).value)
    assert "override 'training.lora.rank=abc'" in msg and "valid integer" in msg
    msg = str(pytest.raises(ConfigError, load_config, path, ["training.lora.rank.x=1"]).value)
    assert "training.lora.rank is a value, not a section" in msg


def test_resolved_config_roundtrip(tmp_path):
    cfg = validate_config({"training": {"method": "dpo", "trl": {"beta": 0.2}}, "loop": {"rounds": 2}})
    text = dump_config(cfg)
    again = load_config(_write(tmp_path, text))
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    # The output folder does not change results, so it does not change the fingerprint ...
    moved = validate_config(cfg.to_dict(), overrides=["output.run_dir=/elsewhere"])
    assert moved.fingerprint() == cfg.fingerprint()
    # ... but a setting that does, does.
    assert validate_config(cfg.to_dict(), overrides=["loop.seed=1"]).fingerprint() != cfg.fingerprint()


def test_supervised_reward_needs_flag():
    try:
        from selfimprove.score.rewards import REWARDS
    except ImportError:
        pytest.skip("selfimprove.score.rewards not built yet")
    name = next((n for n in ("gold_verifier", "verifier") if n in REWARDS), None)
    if name is None:
        pytest.skip("no gold-label reward registered")
    data = {"scoring": {"rewards": [{"name": name}]}}
    msg = str(pytest.raises(ConfigError, validate_config, data).value)
    assert "supervised: true" in msg
    assert validate_config({**data, "supervised": True}).supervised


def test_unknown_reward_name_suggests():
    try:
        from selfimprove.score.rewards import REWARDS  # noqa: F401
    except ImportError:
        pytest.skip("selfimprove.score.rewards not built yet")
    data = {"scoring": {"rewards": [{"name": "majority_vot"}]}}
    msg = str(pytest.raises(ConfigError, validate_config, data).value)
    assert "scoring.rewards[0].name" in msg and "unknown reward 'majority_vot'" in msg


def test_docs_schema_table_is_current(tmp_path):
    """docs/loop.md's generated table matches the schema (regenerate: python -m selfimprove.loop.config)."""
    from selfimprove.loop.config import update_docs

    copy = tmp_path / "loop.md"
    copy.write_text((REPO / "docs" / "loop.md").read_text())
    assert not update_docs(copy), "docs/loop.md is stale: run python -m selfimprove.loop.config docs/loop.md"


def test_every_key_documented():
    fields = list(iter_fields())
    assert len(fields) > 60
    missing = [path for path, _t, _d, desc in fields if not desc.strip()]
    assert not missing, f"keys without a description: {missing}"
    table = schema_markdown()
    doc = (REPO / "docs" / "loop.md").read_text() if (REPO / "docs" / "loop.md").exists() else ""
    for path, *_ in fields:
        assert f"`{path}`" in table
        if doc:
            assert f"`{path}`" in doc, f"docs/loop.md does not document {path}"


CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.name and cfg.description.strip(), f"{path.name} needs a name and a description"
    from selfimprove.score.rewards import is_supervised_reward

    uses_gold = any(is_supervised_reward(t.name) for t in cfg.scoring.rewards)
    assert uses_gold == cfg.supervised, f"{path.name}: supervised flag must match gold-reward use"
    if cfg.supervised:
        assert "SUPERVISED" in path.read_text(), "a supervised baseline must say so in its file"


def test_expected_recipes_shipped():
    names = {p.name for p in CONFIGS}
    expected = {
        "demo.yaml",
        "ttrl_grpo.yaml",
        "evol_rl.yaml",
        "co_reward.yaml",
        "rejection_sft.yaml",
        "sc_dpo.yaml",
        "self_rewarding_dpo.yaml",
        "gt_grpo_baseline.yaml",
        "pairwise_judge_dpo.yaml",
    }
    if not names:
        pytest.skip("no configs yet")
    assert expected <= names, f"missing recipes: {sorted(expected - names)}"


def test_error_lines_point_at_the_key(tmp_path):
    text = "name: x\n\n# comment\nloop:\n  seed: 1\n  guard:\n    action: explode\n"
    msg = str(pytest.raises(ConfigError, load_config, _write(tmp_path, text)).value)
    assert re.search(r"cfg\.yaml:7: loop\.guard\.action", msg), msg


def test_recipes_ship_inside_the_package():
    """`selfimprove demo` finds its recipe through the package, so a wheel install has it too."""
    import selfimprove
    from selfimprove.loop.demo_cli import DEMO_CONFIG

    pkg = Path(selfimprove.__file__).resolve().parent
    assert DEMO_CONFIG == pkg / "configs" / "demo.yaml"
    assert DEMO_CONFIG.is_file()
    shipped = {p.name for p in (pkg / "configs").glob("*.yaml")}
    assert {p.name for p in CONFIGS} <= shipped


@pytest.mark.parametrize(
    ("model", "instruction", "expected"),
    [("builtin:sorting", None, False), ("/models/any", None, True), ("builtin:sorting", True, True)],
)
def test_task_instruction_default_follows_the_model(model, instruction, expected):
    """builtin: models are trained without the answer-format instruction; model folders get it."""
    from selfimprove.loop.inputs import load_task
    from selfimprove.tasks.synthetic import INSTRUCTION

    data = {"model": {"path": model}, "task": {"name": "sorting", "instruction": instruction}}
    task = load_task(validate_config(data))
    prompts, _ = task.make_split("eval", 2, seed=0)
    assert all((INSTRUCTION in p["prompt"][0]["content"]) is expected for p in prompts)


def test_the_ground_truth_baseline_has_the_budget_of_its_label_free_twin():
    """gt_grpo_baseline.yaml is what ttrl_grpo.yaml is measured against "with the same budget":
    only the reward (and the supervised flag) may differ."""
    root = Path(__file__).resolve().parents[1] / "configs"
    ttrl, gold = load_config(root / "ttrl_grpo.yaml"), load_config(root / "gt_grpo_baseline.yaml")
    for section in ("model", "task", "generation", "training", "evaluation", "loop"):
        assert getattr(gold, section) == getattr(ttrl, section), section
    assert gold.supervised and not ttrl.supervised


# -- generation options scoped per backend ------------------------------------------------------

BACKEND_OVERRIDES = {
    "vllm": ["generation.backend=vllm"],
    "hf": ["generation.backend=hf"],
    "openai": ["generation.backend=openai", "generation.openai.base_url=http://127.0.0.1:8000/v1"],
}


@pytest.mark.parametrize("backend", sorted(BACKEND_OVERRIDES))
@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_recipe_loads_with_every_backend(path, backend):
    """A recipe's vLLM-only settings (enforce_eager, kv_cache_gb) live in generation.vllm, read only
    by that backend: switching backend by override neither fails nor hands them to another one."""
    cfg = load_config(path, BACKEND_OVERRIDES[backend])
    options = cfg.generation.backend_options()
    from selfimprove.loop.components import generator_options

    built = generator_options(cfg)
    if backend == "vllm":
        assert options["enforce_eager"] is True and built["kv_cache_gb"] == 1
        assert built["enable_lora"] is True and built["max_lora_rank"] >= cfg.training.lora.rank
    else:
        assert not {"enforce_eager", "kv_cache_gb", "enable_lora", "max_lora_rank"} & set(built)
    if backend == "openai":
        assert built == {"base_url": "http://127.0.0.1:8000/v1"}
    # The options reach the backend's constructor as keywords it takes (no TypeError at start).
    import inspect

    from selfimprove.generate.hf_backend import HFGenerator
    from selfimprove.generate.openai_backend import OpenAIGenerator
    from selfimprove.generate.vllm_backend import VLLMGenerator

    cls = {"vllm": VLLMGenerator, "hf": HFGenerator, "openai": OpenAIGenerator}[backend]
    inspect.signature(cls).bind("model", **built)


def test_options_of_another_backend_are_a_load_error_naming_key_and_override(tmp_path):
    """A config written before the per-backend sections (vLLM options in generation.options) still
    loads with its backend, and fails at load, not at round 0 after the run folder was written,
    when the backend is switched: the message names the key, its line, the override that chose the
    backend and where the option goes now."""
    old = _write(tmp_path, "generation:\n  backend: vllm\n  options: {enforce_eager: true, kv_cache_gb: 1}\n")
    cfg = load_config(old)
    assert cfg.generation.backend_options() == {"enforce_eager": True, "kv_cache_gb": 1}
    # The same settings in the new place give the same fingerprint: a run started with the old
    # layout resumes with the new one.
    new = validate_config({"generation": {"vllm": {"enforce_eager": True, "kv_cache_gb": 1}}})
    assert new.fingerprint() == cfg.fingerprint()
    msg = str(pytest.raises(ConfigError, load_config, old, ["generation.backend=hf"]).value)
    assert "cfg.yaml:3: generation.options.enforce_eager: not an option of the hf backend" in msg, msg
    assert "command-line override 'generation.backend=hf'" in msg
    assert "generation.vllm.enforce_eager" in msg
    # Typos in a section are caught even while another backend runs.
    msg = str(pytest.raises(ConfigError, validate_config, {"generation": {"hf": {"dtyp": "float32"}}}).value)
    assert "generation.hf.dtyp" in msg and "did you mean 'dtype'" in msg
    msg = str(pytest.raises(ConfigError, validate_config, {"generation": {"openai": {"api_key": "x"}}}).value)
    assert "generation.openai.api_key" in msg and "api_key_env" in msg  # keys come from the environment
    # openai needs a server URL; the same option twice is ambiguous.
    msg = str(pytest.raises(ConfigError, validate_config, {"generation": {"backend": "openai"}}).value)
    assert "generation.openai.base_url: required" in msg
    both = {"generation": {"options": {"dtype": "float32"}, "hf": {"dtype": "float32"}, "backend": "hf"}}
    assert "keep one" in str(pytest.raises(ConfigError, validate_config, both).value)


def test_fingerprint_ignores_sections_of_backends_not_in_use():
    base = validate_config({"generation": {"backend": "hf"}})
    other = validate_config({"generation": {"backend": "hf", "vllm": {"enforce_eager": False}}})
    assert other.fingerprint() == base.fingerprint()
    changed = validate_config({"generation": {"backend": "hf", "hf": {"batch_size": 4}}})
    assert changed.fingerprint() != base.fingerprint()


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["evaluation.n=4"], "command-line override 'evaluation.n=4' (with "),
        (
            ["generation.n=4", "generation.n_train=8"],
            "command-line override 'generation.n=4' and 'generation.n_train=8'",
        ),
        (["task.name=null"], "command-line override 'task.name=null' (with "),
    ],
)
def test_an_error_caused_by_an_override_names_the_override(overrides, needle):
    """A check across a section's keys failed because of an override: the message names the
    override (before, it cited the section's line in the file, which the user had not changed)."""
    msg = str(
        pytest.raises(ConfigError, load_config, REPO / "configs" / "rejection_sft.yaml", overrides).value
    )
    assert needle in msg, msg


def test_a_config_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"name: x\nloop:\n  rounds: 2 # caf\xe9\n")
    msg = str(pytest.raises(ConfigError, load_config, path).value)
    assert msg.startswith(f"{path}:3: not UTF-8 text (byte 0xe9 at column 18)"), msg


def test_runs_started_before_the_new_keys_still_resume():
    """The default config and every shipped recipe hash as they did at 158bbd3 (before
    generation.vllm/hf/openai, task.chat_template, task.long_prompts, scoring.vote_truncated), so
    `--resume` of a run started then is not refused as a changed config. A new key that changes
    nothing at its default belongs in _FINGERPRINT_OMITTED_DEFAULTS (selfimprove/loop/config.py)."""
    assert RunConfig().fingerprint() == "8791252249a9c262"
    assert load_config(REPO / "configs" / "rejection_sft.yaml").fingerprint() == "2e34584e642351ef"
    assert load_config(REPO / "configs" / "demo.yaml").fingerprint() == "8d87dbcc1cbfde92"


def test_a_command_whose_module_fails_to_import_is_not_dropped_silently(tmp_path):
    """A broken install fails loudly with the cause (it used to drop the sub-command from --help)."""
    import os
    import subprocess
    import sys

    broken = tmp_path / "selfimprove_broken"
    broken.mkdir()
    (broken / "__init__.py").write_text("")
    (broken / "cmd.py").write_text("import selfimprove_missing_dependency\n")
    code = (
        "import sys; from selfimprove import cli; "
        "cli.COMMANDS['broken'] = ('selfimprove_broken.cmd', 'x'); sys.exit(cli.main(['--help']))"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "selfimprove_missing_dependency" in proc.stderr
