"""Build small models and character-level tokenizers locally (no hub).

Used by the tests (tiny models in fixtures) and by the demo's embedded base model. The models are
Qwen2 architectures with ``head_dim`` 64, which vLLM's CPU attention kernels accept, saved as
safetensors folders that load in transformers, PEFT and vLLM alike.
"""

from __future__ import annotations

import string
from pathlib import Path

# ChatML, like Qwen's; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The embedded base model's template: the user's text, a newline, then the answer. It has no role
# markers because a model trained from scratch needs none, and every prompt token costs training
# time on 2 cores (ChatML adds 19 tokens to a 40-70 token problem). Other roles' texts are written
# as they are, one per line; the answer ends with <|im_end|> like ChatML's.
COMPACT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
)
TEMPLATES = {"chatml": CHAT_TEMPLATE, "compact": COMPACT_TEMPLATE}
SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]
CHARS = [c for c in string.printable if c not in "\r\x0b\x0c"]


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode symbols, printable ASCII first (so those get the low ids)."""
    # GPT-2's table: printable bytes map to themselves, the others to chr(256 + i) in order.
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    first = [b for c in CHARS for b in c.encode()]
    rest = [b for b in range(256) if b not in set(first)]
    return [table[b] for b in first + rest]


def build_char_tokenizer(out_dir: str | Path | None = None, template: str = "chatml"):
    """A character-level (byte-level) tokenizer with a chat template; saved to ``out_dir`` if given.

    ``template`` is ``"chatml"`` (Qwen's role-marked turns, the default) or ``"compact"`` (the
    user's text and a newline, see ``COMPACT_TEMPLATE``).

    transformers 5 loads every ``qwen2`` model's tokenizer as ``Qwen2Tokenizer`` whatever the
    saved files say, so the tokenizer *is* a Qwen2Tokenizer: a BPE without merges over the 256
    byte symbols. Every byte is in the vocabulary (nothing is ever dropped), ASCII text is one
    token per character, and the tokenizer built here equals the one HF, vLLM and TRL reload.
    """
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; choose one of {', '.join(TEMPLATES)}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + _byte_symbols())}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|unk|>",
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        model_max_length=2048,
        padding_side="left",
    )
    tok.chat_template = TEMPLATES[template]
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def build_tiny_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    chat_template: str = "chatml",
) -> Path:
    """Create a randomly initialised Qwen2 model + char tokenizer in ``out_dir`` (safetensors).

    ``hidden_size / num_heads`` must be 64 so that vLLM's CPU kernels accept the model.
    ``chat_template`` names the tokenizer's template (see :func:`build_char_tokenizer`).
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if hidden_size % num_heads or hidden_size // num_heads != 64:
        raise ValueError(
            f"hidden_size/num_heads must be 64 (vLLM CPU kernels), got {hidden_size}/{num_heads}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_char_tokenizer(out, template=chat_template)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        head_dim=64,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    return out
