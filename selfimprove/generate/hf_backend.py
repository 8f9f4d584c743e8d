"""HF transformers backend: batched ``generate`` with left padding and PEFT adapters by path.

The CPU fallback when vLLM is unavailable, and the reference that vLLM's greedy output is checked
against. Sampling means the same as on vLLM: temperature 0 is greedy, stop strings cut the text and
end with finish_reason "stop", a seed makes a call repeatable, and log-probabilities are those of
the raw model distribution (before temperature / top-p), like vLLM's default.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import BackendError
from selfimprove.generate._common import adapter_fingerprint, render_prompt, single_token_ids, trim_at_stop
from selfimprove.generate.base import Completion, Prompt, Sampling
from selfimprove.models.loading import resolve_model_dir

log = logging.getLogger(__name__)


class HFGenerator:
    """Generator on a transformers model in this process (CPU or one CUDA device)."""

    backend = "hf"

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 16,
        trust_remote_code: bool = False,
    ) -> None:
        """Load the model and tokenizer from a local folder (safetensors only).

        ``device="auto"``: the first CUDA device when torch sees one, else the CPU.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_dir = resolve_model_dir(model)
        self.model = str(model)
        self.device = device
        self.batch_size = batch_size
        try:
            torch_dtype = getattr(torch, dtype)
        except AttributeError as exc:
            raise BackendError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)") from exc
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(self.model_dir), trust_remote_code=trust_remote_code
        )
        self.base = AutoModelForCausalLM.from_pretrained(
            str(self.model_dir),
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        ).to(device)
        self.base.eval()
        self.pad_id = self.tokenizer.pad_token_id
        eos = self.base.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if self.pad_id is None:
            self.pad_id = next(iter(self.eos_ids), 0)
        self._peft = None  # PeftModel wrapping self.base, created with the first adapter
        self._loaded: dict[str, str] = {}  # adapter path -> loaded adapter name (path + digest)

    # -- adapters ---------------------------------------------------------------------------
    def _model_for(self, adapter: str | None):
        """The module to call: the base model, or the PEFT model with ``adapter`` active."""
        if adapter is None:
            return None
        from peft import PeftModel

        path = str(Path(adapter).resolve())
        digest = adapter_fingerprint(path)
        name = f"a{digest}"
        if self._loaded.get(path) != name:
            old = self._loaded.get(path)
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.base, path, adapter_name=name)
            else:
                self._peft.load_adapter(path, adapter_name=name)
            # A re-saved adapter replaces the old version of the same folder.
            if old is not None and old in self._peft.peft_config:
                self._peft.set_adapter(name)
                self._peft.delete_adapter(old)
            self._loaded[path] = name
            self._peft.eval()
        self._peft.set_adapter(name)
        return self._peft

    # -- generation -------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        *,
        adapter: str | None = None,
        progress: bool = False,
    ) -> list[list[Completion]]:
        """Return ``sampling.n`` completions for each prompt, in prompt order."""
        import contextlib

        import torch
        from tqdm.auto import tqdm

        if self.base is None:
            raise BackendError("the HF generator is closed")
        encoded = [render_prompt(self.tokenizer, p, i)[1] for i, p in enumerate(prompts)]
        if not encoded:
            return []
        model = self._model_for(adapter)
        ctx = contextlib.nullcontext()
        if model is None:
            model = self.base
            if self._peft is not None:
                # The base model carries injected LoRA layers once an adapter was loaded.
                ctx = self._peft.disable_adapter()
        per_batch = max(1, self.batch_size // sampling.n)
        results: list[list[Completion]] = []
        batches = range(0, len(encoded), per_batch)
        with ctx, torch.inference_mode():
            for b, start in enumerate(tqdm(batches, desc="generate (hf)", disable=not progress)):
                if sampling.seed is not None:
                    # Seeded per batch so a call is repeatable whatever ran before it.
                    torch.manual_seed(sampling.seed + b)
                chunk = encoded[start : start + per_batch]
                results.extend(self._generate_batch(model, chunk, sampling))
        return results

    def _generate_batch(
        self, model: Any, chunk: list[list[int]], sampling: Sampling
    ) -> list[list[Completion]]:
        import torch

        width = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, ids in enumerate(chunk):
            if ids:
                input_ids[i, width - len(ids) :] = torch.tensor(ids)
                attention[i, width - len(ids) :] = 1
        greedy = sampling.temperature == 0
        gen_kwargs: dict[str, Any] = dict(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            max_new_tokens=sampling.max_tokens,
            do_sample=not greedy,
            num_return_sequences=sampling.n,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids) or None,
            return_dict_in_generate=True,
            output_logits=sampling.logprobs is not None,
        )
        if greedy:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            # top_k=0: no top-k cut (the model's generation_config may set one; vLLM applies none).
            gen_kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            gen_kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        out = model.generate(**gen_kwargs)
        new = out.sequences[:, width:].tolist()
        logprob_steps = None
        if sampling.logprobs is not None:
            logprob_steps = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [rows, steps, V]
        # Sampling.logprob_tokens: texts that are one token each, reported at every step.
        extra_ids = (
            single_token_ids(self.tokenizer, sampling.logprob_tokens) if logprob_steps is not None else {}
        )
        groups: list[list[Completion]] = []
        for i, ids in enumerate(chunk):
            group = []
            for j in range(sampling.n):
                row = i * sampling.n + j
                group.append(self._completion(new[row], len(ids), sampling, logprob_steps, row, extra_ids))
            groups.append(group)
        return groups

    def _completion(
        self,
        gen: list[int],
        n_prompt: int,
        sampling: Sampling,
        logprob_steps: Any,
        row: int,
        extra_ids: dict[str, int] | None = None,
    ) -> Completion:
        # Generated tokens run to the first EOS (kept, as vLLM counts it); later positions are padding.
        ended_eos = False
        tokens: list[int] = []
        for t in gen:
            tokens.append(t)
            if t in self.eos_ids:
                ended_eos = True
                break
        else:
            # No EOS: a row that stopped early (stop string) is padded at its tail.
            while tokens and tokens[-1] == self.pad_id and len(tokens) < len(gen):
                tokens.pop()
        text_tokens = tokens[:-1] if ended_eos else tokens
        text = self.tokenizer.decode(text_tokens, skip_special_tokens=True)
        text, hit_stop = trim_at_stop(text, sampling.stop)
        if hit_stop:
            # transformers stops a row at the token that completes a stop string, but it can miss
            # one (e.g. a stop string that only appears once partial UTF-8 bytes are decoded):
            # keep the tokens up to the first whose decoded prefix holds a stop string, as vLLM
            # does, so token_ids and completion_tokens agree with the trimmed text.
            lo, hi = 1, len(text_tokens)
            while lo < hi:
                mid = (lo + hi) // 2
                prefix = self.tokenizer.decode(text_tokens[:mid], skip_special_tokens=True)
                if trim_at_stop(prefix, sampling.stop)[1]:
                    hi = mid
                else:
                    lo = mid + 1
            if lo < len(tokens):
                tokens, ended_eos = tokens[:lo], False
        if ended_eos or hit_stop:
            reason = "stop"
        elif len(tokens) >= sampling.max_tokens:
            reason = "length"
        else:
            reason = "stop"
        logprobs = token_logprobs = None
        if logprob_steps is not None:
            logprobs, token_logprobs = [], []
            k = sampling.logprobs
            for step, tok in enumerate(tokens):
                dist = logprob_steps[row, step]
                token_logprobs.append(float(dist[tok]))
                entry: dict[str, float] = {}
                if k:
                    vals, idx = dist.topk(k)
                    for v, t in zip(vals.tolist(), idx.tolist(), strict=True):
                        # Same-text tokens (partial UTF-8 bytes) share a key: keep the most likely.
                        entry.setdefault(self.tokenizer.decode([t]), float(v))
                for text, tid in (extra_ids or {}).items():
                    entry[text] = float(dist[tid])
                logprobs.append(entry)
        return Completion(
            text=text,
            finish_reason=reason,
            prompt_tokens=n_prompt,
            completion_tokens=len(tokens),
            token_ids=tokens,
            logprobs=logprobs,
            token_logprobs=token_logprobs,
        )

    def close(self) -> None:
        """Drop the model (frees memory). Safe to call twice."""
        self._peft = None
        self.base = None

    def __enter__(self) -> HFGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
