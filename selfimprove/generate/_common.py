"""Helpers shared by the backends: chat templating, adapter fingerprints, stop-string trimming."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import InputError
from selfimprove.generate.base import Prompt

# The files whose content defines a PEFT adapter version.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def single_token_ids(tokenizer: Any, texts: Sequence[str]) -> dict[str, int]:
    """``{text: token id}`` for the texts that are exactly one token (``Sampling.logprob_tokens``).

    Texts that tokenize to several tokens (or none) are skipped: a per-step log-probability only
    exists for a single token.
    """
    out: dict[str, int] = {}
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out[text] = ids[0]
    return out


def check_prompt(prompt: Any, index: int) -> None:
    """Raise InputError unless ``prompt`` is a string or a list of {role, content} messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError(f"prompt {index} is empty")
        return
    if isinstance(prompt, list) and prompt:
        for j, msg in enumerate(prompt):
            if not (isinstance(msg, dict) and isinstance(msg.get("role"), str) and "content" in msg):
                raise InputError(
                    f"prompt {index}, message {j}: expected a dict with 'role' and 'content', got {msg!r}"
                )
        return
    raise InputError(
        f"prompt {index}: expected a string or a non-empty list of chat messages, got {type(prompt).__name__}"
    )


def render_prompt(tokenizer: Any, prompt: Prompt, index: int = 0) -> tuple[str, list[int]]:
    """Text and token ids of one prompt; chat messages go through the tokenizer's chat template.

    Plain strings are tokenized like the engines do (with the tokenizer's special tokens); a chat
    prompt is rendered by the template, which already holds any special tokens, so none are added.
    """
    check_prompt(prompt, index)
    if isinstance(prompt, str):
        return prompt, list(tokenizer(prompt)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"prompt {index} is a list of chat messages but the model's tokenizer has no chat template; "
            "pass plain-text prompts or use a model with a chat_template"
        )
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])


def adapter_fingerprint(path: str | Path) -> str:
    """A digest of an adapter folder's files: it changes whenever the adapter is re-saved."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"adapter folder not found: {folder}")
    if not (folder / "adapter_config.json").is_file():
        raise InputError(f"{folder} is not a PEFT adapter folder: adapter_config.json is missing")
    h = hashlib.sha256()
    found = False
    for name in ADAPTER_FILES:
        f = folder / name
        if f.is_file():
            found = found or name != "adapter_config.json"
            h.update(name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    if not found:
        raise InputError(f"{folder} has no adapter weights (adapter_model.safetensors)")
    return h.hexdigest()[:16]


def adapter_rank(path: str | Path) -> int:
    """The LoRA rank ``r`` stored in an adapter's adapter_config.json."""
    cfg_path = Path(path) / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {cfg_path}: {exc}") from exc
    return int(cfg.get("r", 0))


def trim_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; return (text, whether a stop string was found)."""
    cut = -1
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (cut < 0 or i < cut):
            cut = i
    if cut < 0:
        return text, False
    return text[:cut], True


__all__ = [
    "adapter_fingerprint",
    "adapter_rank",
    "check_prompt",
    "render_prompt",
    "trim_at_stop",
]
