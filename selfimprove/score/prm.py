"""Implicit process reward (Free Process Rewards without Process Labels).

The outcome reward of a response is ``beta * sum_t log(pi_adapter(y_t | x, y_<t) / pi_base(...))``
and the reward of step k is the change of that running sum over the step's tokens. Both policies
come from one PEFT model: adapter enabled (policy) and disabled (its base, the reference). Any
DPO-trained adapter is such a model. Steps are newline-separated by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfimprove.errors import ConfigError, InputError

AGGREGATES = ("min", "sum", "mean", "last")


@dataclass
class ProcessScore:
    """Per-step implicit rewards of one response."""

    steps: list[str]
    step_rewards: list[float]
    # beta * sum of all token log-ratios (the implicit outcome reward)
    outcome: float
    # unscaled per-token log pi_adapter - log pi_base, in response order
    token_log_ratios: list[float]

    def aggregate(self, how: str = "min") -> float:
        """One number per response: min/sum/mean/last of the step rewards (min: weakest step)."""
        if how not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
        if not self.step_rewards:
            return self.outcome
        if how == "min":
            return min(self.step_rewards)
        if how == "sum":
            return sum(self.step_rewards)
        if how == "mean":
            return sum(self.step_rewards) / len(self.step_rewards)
        return self.step_rewards[-1]


def split_steps(response: str, separator: str = "\n") -> list[str]:
    """Split a response into steps, each keeping its trailing separator; empty steps merge forward."""
    if not response:
        return []
    parts = response.split(separator)
    steps = [p + separator for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    merged: list[str] = []
    carry = ""
    for s in steps:
        if not s.strip():
            carry += s  # a blank line is not a step of its own
            continue
        merged.append(carry + s)
        carry = ""
    if carry:
        if merged:
            merged[-1] += carry
        else:
            merged.append(carry)
    return merged


class ImplicitPRM:
    """Step and outcome rewards from a PEFT adapter against its own base model."""

    def __init__(
        self,
        model: Any,
        adapter: str | Path | None = None,
        *,
        tokenizer: Any = None,
        beta: float = 0.05,
        step_separator: str = "\n",
        batch_size: int = 4,
    ) -> None:
        import torch  # noqa: F401 - fail early without torch

        if beta <= 0:
            raise ConfigError(f"implicit PRM beta must be > 0, got {beta!r}")
        if isinstance(model, (str, Path)):
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if adapter is None:
                raise ConfigError("implicit PRM: give the adapter folder of the policy (a PEFT LoRA adapter)")
            for p, what in ((model, "base model"), (adapter, "adapter")):
                if not Path(p).is_dir():
                    raise ConfigError(f"implicit PRM: {what} folder {str(p)!r} does not exist")
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model))
            base = AutoModelForCausalLM.from_pretrained(str(model), dtype="float32", use_safetensors=True)
            model = PeftModel.from_pretrained(base, str(adapter))
        if not hasattr(model, "disable_adapter"):
            raise ConfigError("implicit PRM: model must be a PEFT model (adapter enabled vs disabled)")
        if tokenizer is None:
            raise ConfigError("implicit PRM: a tokenizer is needed with a model object")
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.beta = beta
        self.sep = step_separator
        self.batch_size = batch_size

    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, (list, tuple)):
            text = self.tokenizer.apply_chat_template(
                list(prompt), tokenize=False, add_generation_prompt=True
            )
        else:
            text = str(prompt)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _logprobs(self, rows: list[list[int]], starts: list[int]) -> list[list[float]]:
        """Per-token log-probabilities of rows[i][starts[i]:] under the current model state."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:].to(device)
        tok_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        # token t (t >= 1) is predicted at position t-1
        return [
            tok_lp[i, max(s - 1, 0) : len(r) - 1].tolist()
            for i, (r, s) in enumerate(zip(rows, starts, strict=True))
        ]

    def score(
        self, prompts: Sequence[Any], responses: Sequence[str], *, progress: bool = False
    ) -> list[ProcessScore]:
        """Step rewards, outcome reward and token log-ratios for each (prompt, response)."""
        from tqdm.auto import tqdm

        if len(prompts) != len(responses):
            raise InputError(f"implicit PRM: {len(prompts)} prompts but {len(responses)} responses")
        results: list[ProcessScore] = []
        batches = range(0, len(prompts), self.batch_size)
        for b in tqdm(batches, desc="implicit PRM", disable=not progress):
            chunk = list(
                zip(prompts[b : b + self.batch_size], responses[b : b + self.batch_size], strict=True)
            )
            rows, starts, step_lens, all_steps = [], [], [], []
            for prompt, response in chunk:
                pids = self._prompt_ids(prompt)
                steps = split_steps(response or "", self.sep)
                # tokenising step by step gives exact token boundaries between steps
                sids = [list(self.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in steps]
                if not pids:  # a token must precede the first response token to predict it
                    pids = [self.tokenizer.eos_token_id or 0]
                rows.append(pids + [t for s in sids for t in s])
                starts.append(len(pids))
                step_lens.append([len(s) for s in sids])
                all_steps.append(steps)
            nonempty = [i for i, r in enumerate(rows) if len(r) > starts[i]]
            policy: list[list[float]] = [[] for _ in rows]
            ref: list[list[float]] = [[] for _ in rows]
            if nonempty:
                sub_rows = [rows[i] for i in nonempty]
                sub_starts = [starts[i] for i in nonempty]
                pol = self._logprobs(sub_rows, sub_starts)
                with self.model.disable_adapter():
                    base = self._logprobs(sub_rows, sub_starts)
                for j, i in enumerate(nonempty):
                    policy[i], ref[i] = pol[j], base[j]
            for i in range(len(rows)):
                ratios = [p - q for p, q in zip(policy[i], ref[i], strict=True)]
                step_rewards, pos = [], 0
                for n in step_lens[i]:
                    step_rewards.append(self.beta * sum(ratios[pos : pos + n]))
                    pos += n
                results.append(
                    ProcessScore(
                        steps=all_steps[i],
                        step_rewards=step_rewards,
                        outcome=self.beta * sum(ratios),
                        token_log_ratios=ratios,
                    )
                )
        return results


def best_of_n(
    prm: ImplicitPRM, prompt: Any, candidates: Sequence[str], *, aggregate: str = "min"
) -> tuple[int, list[float]]:
    """Index of the best candidate by the aggregated implicit process reward, and all scores.

    Ties go to the earliest candidate (deterministic).
    """
    if not candidates:
        raise InputError("best_of_n: no candidates")
    if aggregate not in AGGREGATES + ("outcome",):
        raise ConfigError(
            f"best_of_n aggregate must be one of {AGGREGATES + ('outcome',)}, got {aggregate!r}"
        )
    scores = prm.score([prompt] * len(candidates), list(candidates))
    values = [s.outcome if aggregate == "outcome" else s.aggregate(aggregate) for s in scores]
    best = max(range(len(values)), key=lambda i: (values[i], -i))
    return best, values
