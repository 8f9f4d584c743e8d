"""The generators of one self-training run, each built on first use and closed with the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from selfimprove.generate.pool import EnginePool
from selfimprove.loop.components import generator_options
from selfimprove.loop.config import RunConfig


class Engines(EnginePool):
    """The policy's engine (serves the base model and every round's adapter) and engines on other models.

    Another model (``scoring.judge.model``, ``scoring.paraphrase.model``) gets the same
    ``generation.backend`` and its backend-scoped options (``generation.vllm`` / ``hf`` /
    ``openai``: memory, server URL); the LoRA options and ``model.trust_remote_code`` are the
    policy's only. A ``policy`` engine handed in by the caller is the caller's to close.
    """

    def __init__(self, config: RunConfig, model_path: str, log: Callable[[str], None], policy: Any = None):
        super().__init__({"policy": policy}, log=log)
        self.cfg = config
        self.model_path = model_path

    @property
    def policy(self) -> Any:
        """The engine on ``model.path``; adapters are passed to it per request."""
        return self.get("policy", self.cfg.generation.backend, self.model_path, generator_options(self.cfg))

    def other(self, model: str) -> Any:
        """An engine on another model, kept until :meth:`close` or ``release(model)``."""
        return self.get(model, self.cfg.generation.backend, model, self.cfg.generation.backend_options())
