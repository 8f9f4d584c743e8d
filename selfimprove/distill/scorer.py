"""The student's loss and entropy on a given completion, teacher-forced (no generation).

Labels travel between teacher and student as text: the scorer renders the prompt with the
student's own tokenizer (its chat template for chat prompts, as generation does), appends the
completion's tokens and reads, at every completion position, the negative log-probability of
the given token (loss) and the entropy of the student's next-token distribution. Teacher and
student may therefore have different tokenizers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfimprove.generate._common import render_prompt
from selfimprove.generate.base import Prompt


@dataclass(frozen=True)
class TokenScores:
    """Means over the measured completion tokens (None when there were none)."""

    loss: float | None
    entropy: float | None
    tokens: int


def completion_ids(
    tokenizer: Any, completion: str, span: tuple[int, int] | None = None
) -> tuple[list[int], list[bool]]:
    """Token ids of ``completion`` and which of them are measured (all, or the ones of ``span``).

    With a character ``span`` the text is tokenized in three pieces (before, inside, after), so
    the measured tokens are exactly the span's.
    """
    if span is None:
        ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        return ids, [True] * len(ids)
    a, b = span
    ids: list[int] = []
    mask: list[bool] = []
    for piece, measured in ((completion[:a], False), (completion[a:b], True), (completion[b:], False)):
        if piece:
            p = list(tokenizer(piece, add_special_tokens=False)["input_ids"])
            ids += p
            mask += [measured] * len(p)
    return ids, mask


class StudentScorer:
    """Teacher-forced loss and entropy of a local HF model (optionally with a LoRA adapter)."""

    def __init__(
        self,
        model: str | Path,
        *,
        adapter: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 8,
        trust_remote_code: bool = False,
    ) -> None:
        """Load the model (float32, safetensors only) and its tokenizer."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from selfimprove.models.loading import resolve_model_dir

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = resolve_model_dir(model)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=True
        ).to(device)
        if adapter is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter))
        self.model.eval()
        self.device = device
        self.batch_size = batch_size
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def encode(
        self, prompt: Prompt, completion: str, span: tuple[int, int] | None = None, index: int = 0
    ) -> tuple[list[int], list[bool]]:
        """(input ids, measured-position mask) of prompt + completion, as scored."""
        _, p_ids = render_prompt(self.tokenizer, prompt, index)
        c_ids, c_mask = completion_ids(self.tokenizer, completion, span)
        return list(p_ids) + c_ids, [False] * len(p_ids) + c_mask

    def score(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str],
        spans: Sequence[tuple[int, int] | None] | None = None,
        *,
        progress: bool = False,
    ) -> list[TokenScores]:
        """Per pair: mean loss (NLL, nats) and mean entropy (nats) over the measured completion tokens."""
        import torch
        from tqdm.auto import tqdm

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        spans = list(spans) if spans is not None else [None] * len(prompts)
        encoded = [
            self.encode(p, c, s, i)
            for i, (p, c, s) in enumerate(zip(prompts, completions, spans, strict=True))
        ]
        out: list[TokenScores] = []
        starts = range(0, len(encoded), self.batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="student need", disable=not progress):
                chunk = encoded[start : start + self.batch_size]
                width = max(len(ids) for ids, _ in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)
                measured = torch.zeros((len(chunk), width), dtype=torch.bool)
                for i, (row, mask) in enumerate(chunk):  # right padding: positions match an unpadded pass
                    ids[i, : len(row)] = torch.tensor(row)
                    attention[i, : len(row)] = 1
                    measured[i, : len(row)] = torch.tensor(mask, dtype=torch.bool)
                logits = self.model(
                    input_ids=ids.to(self.device), attention_mask=attention.to(self.device)
                ).logits
                logp = logits[:, :-1].float().log_softmax(-1)  # position t predicts token t+1
                target = ids[:, 1:].to(self.device)
                nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                entropy = -(logp.exp() * logp).sum(-1)
                m = measured[:, 1:].to(self.device)
                for i in range(len(chunk)):
                    n = int(m[i].sum())
                    if n == 0:
                        out.append(TokenScores(None, None, 0))
                        continue
                    out.append(TokenScores(float(nll[i][m[i]].mean()), float(entropy[i][m[i]].mean()), n))
        return out

    def close(self) -> None:
        """Drop the model (frees memory)."""
        self.model = None


__all__ = ["StudentScorer", "TokenScores", "completion_ids"]
