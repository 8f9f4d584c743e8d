"""Prompts checked with the model's tokenizer before an engine starts or anything is written.

The same checks run for every backend (the engines differ in how they fail: HF crashed on an
empty prompt and ran on for minutes past its context; vLLM failed only after its engine start):
an empty prompt, a chat prompt for a tokenizer without a chat template, and a prompt that leaves
no room for a single generated token in the model's context are one-line errors naming the prompt
(or, when asked, too-long prompts are skipped and counted).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfimprove.errors import InputError
from selfimprove.generate._common import render_prompt
from selfimprove.generate.base import Prompt


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a local model folder (no hub)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the tokenizer of {model_dir}: {exc}") from None


def context_length(model_dir: str | Path, max_model_len: int | None = None) -> int:
    """The model's context in tokens from its config.json, capped by ``max_model_len`` (0: unknown)."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    n = int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 0)
    if max_model_len:
        n = min(n, int(max_model_len)) if n else int(max_model_len)
    return n


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer renders chat messages (an instruct model expects them)."""
    return bool(getattr(tokenizer, "chat_template", None))


def as_chat(prompt: Prompt) -> Prompt:
    """A plain-text prompt as one user message (rendered with the chat template); chats unchanged."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


@dataclass
class PromptCheck:
    """What :func:`check_prompts` found: token counts, and the prompts left out as too long."""

    tokens: list[int]
    context: int
    too_long: list[int] = field(default_factory=list)  # indices of skipped prompts

    def summary(self) -> str:
        """One line on the skipped prompts ("" when none was skipped)."""
        if not self.too_long:
            return ""
        longest = max(self.tokens[i] for i in self.too_long)
        return (
            f"{len(self.too_long)} prompt(s) longer than the model's context of {self.context} tokens "
            f"were left out (the longest has {longest} tokens)"
        )


def check_prompts(
    tokenizer: Any,
    prompts: Sequence[Prompt],
    names: Sequence[str],
    *,
    context: int,
    skip_long: bool = False,
    skip_hint: str = "",
) -> PromptCheck:
    """Tokenize every prompt as the engines will; raise InputError on the first bad one.

    ``names[i]`` says where prompt ``i`` comes from (``file:line``, a prompt id). A prompt with
    no tokens is an error. One with ``context`` tokens or more leaves no room to generate: an
    error naming ``skip_hint`` (the option that skips such prompts), or, with ``skip_long``, a
    prompt listed in ``too_long``. ``context`` 0 means unknown: lengths are not checked.
    """
    tokens: list[int] = []
    check = PromptCheck(tokens=tokens, context=context)
    for i, (prompt, name) in enumerate(zip(prompts, names, strict=True)):
        if not isinstance(prompt, str) and not has_chat_template(tokenizer):
            raise InputError(
                f"{name}: a chat-message prompt, but the model's tokenizer has no chat template; "
                "give plain-text prompts or a model with a chat_template"
            )
        try:
            _text, ids = render_prompt(tokenizer, prompt, i)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        tokens.append(len(ids))
        if not ids:
            raise InputError(f"{name}: the prompt is empty (0 tokens)")
        if context and len(ids) >= context:
            if skip_long:
                check.too_long.append(i)
                continue
            hint = f", or skip such prompts with {skip_hint}" if skip_hint else ""
            raise InputError(
                f"{name}: the prompt has {len(ids)} tokens, the model's context is {context} tokens "
                f"(no room to generate); shorten it{hint}"
            )
    return check


__all__ = ["PromptCheck", "as_chat", "check_prompts", "context_length", "has_chat_template", "load_tokenizer"]
