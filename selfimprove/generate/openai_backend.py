"""OpenAI-compatible backend: ``vllm serve``, llama.cpp's server or a hosted API over HTTP.

- Chat prompts go to ``/v1/chat/completions``; plain-text prompts to ``/v1/completions`` (no silent
  fallback to chat: wrapping raw text in a user turn would change what the model sees; a server
  without a completions endpoint gives a clear error asking for chat prompts).
- One request per sample (``n=1``, seed ``seed + sample_index``): token counts are then exact per
  sample and servers that ignore ``n`` (llama.cpp) behave the same. The seeds are those the vllm
  backend gives its ``n`` children, but served and local samples are not all identical (greedy
  ones are; seeded samples agreed on 124 of 128 when measured, docs/generate.md).
- Requests run on ``max_concurrency`` worker threads. 429, 5xx, time-outs and connection errors
  are retried with exponential back-off (``backoff * 2**attempt``, or the server's
  ``Retry-After`` when given); other 4xx fail at once.
- An interrupt (Ctrl-C, SIGTERM) or a failed request ends ``generate`` at once: no new request or
  retry starts, and requests still in flight are abandoned (the workers are daemon threads, so a
  server that never answers cannot keep the process alive until its time-outs and retries end).
- The API key is read from the environment variable ``api_key_env`` at call time (never stored or
  logged); no key means no Authorization header (local servers need none).
- ``adapter`` selects a served model name: a LoRA registered with
  ``vllm serve BASE --enable-lora --lora-modules NAME=PATH``. A path is mapped to its folder name.
- ``Sampling.logprob_tokens`` (e.g. a judge's answer letters) uses vLLM's ``logprob_token_ids``
  extension, with the ids from the server's ``/tokenize``; a server without ``/tokenize`` gets a
  plain top-k request (counted in ``stats["logprob_tokens_unsupported"]``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import BackendError, InputError
from selfimprove.generate._common import check_prompt
from selfimprove.generate.base import Completion, Prompt, Sampling

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIGenerator:
    """Generator that calls an OpenAI-compatible HTTP server."""

    backend = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        """Configure the client; nothing is sent until ``generate``."""
        import httpx

        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.model = str(model)
        # Accept both http://host:port and http://host:port/v1.
        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0}
        # (text) -> token id on the server (None: not one token, or no /tokenize endpoint)
        self._token_ids: dict[str, int | None] = {}

    # -- HTTP ---------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(
        self, path: str, payload: dict[str, Any], cancel: threading.Event | None = None
    ) -> dict[str, Any]:
        """POST with retries; return the decoded JSON body or raise BackendError naming the URL.

        ``cancel``, once set, stops further attempts and cuts a back-off short.
        """
        import httpx

        cancel = cancel or threading.Event()
        url = self.base_url + path
        last = ""
        for attempt in range(self.max_retries + 1):
            if cancel.is_set():
                raise BackendError(f"{url}: cancelled (generate was interrupted or another request failed)")
            retry_after = None
            with self._lock:
                self.stats["requests"] += 1
            try:
                resp = self._client.post(url, json=payload, headers=self._headers())
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as exc:
                last = f"cannot connect ({type(exc).__name__}: {exc})"
            else:
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError as exc:
                        raise BackendError(f"{url}: response is not JSON: {resp.text[:200]!r}") from exc
                body = resp.text[:300]
                if resp.status_code not in RETRY_STATUS:
                    if resp.status_code == 404 and path == "/completions":
                        raise BackendError(
                            f"{url}: 404, the server has no text-completions endpoint; "
                            f"pass chat-message prompts instead ({body!r})"
                        )
                    raise BackendError(f"{url}: HTTP {resp.status_code}: {body!r}")
                last = f"HTTP {resp.status_code}: {body!r}"
                retry_after = _retry_after(resp.headers.get("retry-after"))
            if attempt == self.max_retries:
                break
            delay = retry_after if retry_after is not None else self.backoff * (2**attempt)
            with self._lock:
                self.stats["retries"] += 1
            log.info("%s: %s; retry %d/%d in %.2f s", url, last, attempt + 1, self.max_retries, delay)
            cancel.wait(delay)  # a back-off that ends at once when generate is interrupted
        raise BackendError(f"{url}: failed after {self.max_retries + 1} attempts: {last}")

    # -- generation -------------------------------------------------------------------------
    def _served_model(self, adapter: str | None) -> str:
        if adapter is None:
            return self.model
        p = Path(adapter)
        return p.name if p.is_dir() else str(adapter)

    def _logprob_token_ids(self, texts: Sequence[str]) -> list[int]:
        """Server token ids of the one-token ``texts`` (vLLM's ``/tokenize``, cached); [] when unsupported."""
        import httpx

        root = self.base_url[: -len("/v1")]
        ids: list[int] = []
        for text in texts:
            if text not in self._token_ids:
                tokens = None
                try:
                    resp = self._client.post(
                        root + "/tokenize",
                        json={"model": self.model, "prompt": text, "add_special_tokens": False},
                        headers=self._headers(),
                    )
                    if resp.status_code == 200:
                        tokens = resp.json().get("tokens")
                except (httpx.HTTPError, ValueError, AttributeError):
                    tokens = None
                if not isinstance(tokens, list):
                    with self._lock:
                        self.stats["logprob_tokens_unsupported"] = (
                            self.stats.get("logprob_tokens_unsupported", 0) + 1
                        )
                    log.info("%s/tokenize unavailable: logprob_tokens fall back to the top-k", root)
                    return []  # not cached: a later call may reach a server that has it
                self._token_ids[text] = int(tokens[0]) if len(tokens) == 1 else None
            tid = self._token_ids[text]
            if tid is not None and tid not in ids:
                ids.append(tid)
        return ids

    def _request(
        self,
        prompt: Prompt,
        sampling: Sampling,
        index: int,
        model: str,
        token_ids: Sequence[int] = (),
        cancel: threading.Event | None = None,
    ) -> Completion:
        payload: dict[str, Any] = {
            "model": model,
            "n": 1,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            payload["seed"] = sampling.seed + index
        chat = not isinstance(prompt, str)
        if chat:
            payload["messages"] = prompt
            if sampling.logprobs is not None:
                payload["logprobs"] = True
                payload["top_logprobs"] = sampling.logprobs
        else:
            payload["prompt"] = prompt
            if sampling.logprobs is not None:
                payload["logprobs"] = sampling.logprobs
        if token_ids:
            payload["logprob_token_ids"] = list(token_ids)
        body = self._post("/chat/completions" if chat else "/completions", payload, cancel)
        return _parse(body, chat, sampling, keep_all=bool(token_ids))

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        *,
        adapter: str | None = None,
        progress: bool = False,
    ) -> list[list[Completion]]:
        """Return ``sampling.n`` completions for each prompt, in prompt order."""
        from tqdm.auto import tqdm

        for i, p in enumerate(prompts):
            check_prompt(p, i)
        model = self._served_model(adapter)
        token_ids = self._logprob_token_ids(sampling.logprob_tokens) if sampling.logprob_tokens else []
        results: list[list[Completion | None]] = [[None] * sampling.n for _ in prompts]
        jobs: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        for job in ((i, j) for i in range(len(prompts)) for j in range(sampling.n)):
            jobs.put(job)
        total = len(prompts) * sampling.n
        done: queue.SimpleQueue[tuple[int, int, Completion | None, BaseException | None]] = (
            queue.SimpleQueue()
        )
        cancel = threading.Event()  # this call's: set when it ends, normally or early

        def work() -> None:
            while not cancel.is_set():
                try:
                    i, j = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, j, self._request(prompts[i], sampling, j, model, token_ids, cancel), None))
                except BaseException as exc:  # handed to the caller's thread
                    done.put((i, j, None, exc))

        # Daemon threads, not a ThreadPoolExecutor: its workers are joined at exit, so a request
        # to a server that never answers held the process until its time-out and every retry.
        workers = [
            threading.Thread(target=work, name=f"openai-request-{k}", daemon=True)
            for k in range(min(self.max_concurrency, total))
        ]
        try:
            for w in workers:
                w.start()
            with tqdm(total=total, desc="generate (openai)", disable=not progress) as bar:
                for _ in range(total):
                    i, j, completion, error = done.get()
                    if error is not None:
                        raise error
                    results[i][j] = completion
                    bar.update(1)
        finally:
            cancel.set()  # normal end: the workers have nothing left; otherwise they stop here
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Close the HTTP connection pool. Safe to call twice."""
        self._client.close()

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(float(value), 60.0)  # cap: a hostile or confused server must not stall us for hours
    except ValueError:
        return None


def _parse(body: dict[str, Any], chat: bool, sampling: Sampling, keep_all: bool = False) -> Completion:
    """One Completion from an OpenAI response with a single choice (``keep_all``: no top-k cut)."""
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (KeyError, IndexError, TypeError) as exc:
        raise BackendError(f"unexpected response shape (no choices[0] text): {str(body)[:300]}") from exc
    usage = body.get("usage") or {}
    raw_reason = choice.get("finish_reason")
    reason = "length" if raw_reason == "length" else "stop"
    logprobs = token_logprobs = None
    lp = choice.get("logprobs")
    if sampling.logprobs is not None and lp:
        if chat:
            content = lp.get("content") or []
            token_logprobs = [float(t["logprob"]) for t in content]
            logprobs = [
                {x["token"]: float(x["logprob"]) for x in (t.get("top_logprobs") or [])} for t in content
            ]
        else:
            token_logprobs = [float(x) for x in lp.get("token_logprobs") or []]
            # vLLM adds the sampled token to the top-k; keep the k most likely, like the other backends.
            logprobs = [
                dict(
                    sorted(((k, float(v)) for k, v in (d or {}).items()), key=lambda kv: -kv[1])[
                        : None if keep_all else sampling.logprobs
                    ]
                )
                for d in lp.get("top_logprobs") or []
            ]
    return Completion(
        text=text or "",
        finish_reason=reason,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        logprobs=logprobs,
        token_logprobs=token_logprobs,
        extra={"finish_reason_raw": raw_reason} if raw_reason not in ("stop", "length") else {},
    )
