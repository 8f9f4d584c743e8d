"""Sampling validation, build_generator, and the backend helpers (pure)."""

from __future__ import annotations

import pytest

from selfimprove.errors import ConfigError, InputError
from selfimprove.generate import (
    BACKENDS,
    Sampling,
    adapter_fingerprint,
    build_generator,
    check_prompt,
    render_prompt,
    trim_at_stop,
)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "sampling.n must be an integer >= 1"),
        ({"temperature": -0.1}, "sampling.temperature must be >= 0"),
        ({"top_p": 0}, "sampling.top_p must be in (0, 1]"),
        ({"max_tokens": 0}, "sampling.max_tokens"),
        ({"logprobs": -1}, "sampling.logprobs"),
    ],
)
def test_sampling_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError) as exc:
        Sampling(**kwargs)
    assert message in str(exc.value)


def test_sampling_stop_string_becomes_tuple():
    assert Sampling(stop="\n").stop == ("\n",)
    assert Sampling(stop=["a", "b"]).to_dict()["stop"] == ["a", "b"]


def test_build_generator_unknown_backend_lists_allowed():
    with pytest.raises(ConfigError) as exc:
        build_generator("tgi", "m")
    assert "unknown generation backend 'tgi'" in str(exc.value)
    for b in BACKENDS:
        assert b in str(exc.value)


def test_build_generator_bad_option_names_backend():
    with pytest.raises(ConfigError, match="backend 'openai': bad option"):
        build_generator("openai", "m", base_url="http://127.0.0.1:1", no_such_option=1)


def test_build_generator_missing_model_folder(tmp_path):
    with pytest.raises(InputError, match="model folder not found"):
        build_generator("hf", str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "text, stop, expected",
    [
        ("abc. def", (".",), ("abc", True)),
        ("abc. def\n", ("\n", "."), ("abc", True)),  # the earliest stop wins
        ("abc", ("x",), ("abc", False)),
        ("abc", (), ("abc", False)),
        ("abc", ("",), ("abc", False)),
        ("STOPabc", ("STOP",), ("", True)),
    ],
)
def test_trim_at_stop(text, stop, expected):
    assert trim_at_stop(text, stop) == expected


@pytest.mark.parametrize("bad", [3, None, [], ["x"], [{"role": "user"}], [{"content": "x"}]])
def test_check_prompt_rejects(bad):
    with pytest.raises(InputError, match="prompt 4"):
        check_prompt(bad, 4)


def test_render_prompt_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text, ids = render_prompt(tok, [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # Specials are single tokens, every other character one token each.
    specials = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert sum(i in specials for i in ids) == 3
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # newlines around the special tokens survive
    assert render_prompt(tok, "ab") == ("ab", tok("ab")["input_ids"])
    tok.chat_template = None
    with pytest.raises(InputError, match="no chat template"):
        render_prompt(tok, [{"role": "user", "content": "hi"}])


def test_adapter_fingerprint_changes_with_content(tmp_path):
    with pytest.raises(InputError, match="adapter folder not found"):
        adapter_fingerprint(tmp_path / "none")
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    with pytest.raises(InputError, match="no adapter weights"):
        adapter_fingerprint(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"one")
    first = adapter_fingerprint(tmp_path)
    assert adapter_fingerprint(tmp_path) == first
    (tmp_path / "adapter_model.safetensors").write_bytes(b"two")
    assert adapter_fingerprint(tmp_path) != first
