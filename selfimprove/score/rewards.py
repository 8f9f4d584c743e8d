"""Reward functions with TRL's call shape: ``f(completions, **columns) -> list[float | None]``.

Each reward is an object whose ``__name__`` TRL uses for logging, so it can be handed straight to
``GRPOTrainer(reward_funcs=[...])``. ``None`` means "cannot score". Completions may be strings or
chat-message lists (TRL's conversational format). Group-level rewards group samples by the
``prompt_id`` column when present, else by the prompt (never by position), and, when
``torch.distributed`` runs several processes, gather the group across processes first so the
result equals the single-process one. Every label-free reward raises ``LabelLeakError`` when a
gold-named column reaches it; only ``verifier_reward`` (registry name ``gold_verifier``) reads
gold, and it is supervised: for baselines only.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import ConfigError, InputError, LabelLeakError
from selfimprove.gold import check_no_gold, is_gold_name, reads_gold, supervised_reward
from selfimprove.registry import build_registered
from selfimprove.score.extract import (
    MAX_CHARS,
    answers_equal,
    get_extractor,
    load_callable,
    normalize_answer,
)
from selfimprove.score.vote import majority_vote

# Keyword arguments TRL passes that are not per-sample columns.
_NON_COLUMNS = frozenset({"trainer_state", "log_extra", "log_metric", "environments"})

RewardFunc = Callable[..., "list[float | None]"]


def completion_text(completion: Any) -> str:
    """Text of a completion given as a string or as TRL's list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts = []
        for msg in completion:
            if not isinstance(msg, dict) or msg.get("role", "assistant") != "assistant":
                continue
            content = msg.get("content", "")
            if isinstance(content, list):  # content blocks: [{"type": "text", "text": ...}]
                content = "".join(
                    b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
                )
            parts.append(content if isinstance(content, str) else "")
        return "\n".join(parts)
    return "" if completion is None else str(completion)


def _prompt_key(prompt: Any) -> str:
    """A hashable, process-independent key for a prompt (text or chat messages)."""
    if isinstance(prompt, str):
        return prompt
    try:
        return json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(prompt)


def _check_columns(name: str, n: int, columns: dict[str, Any]) -> None:
    """Per-sample columns must have one value per completion; say which one does not."""
    for key, value in columns.items():
        if key in _NON_COLUMNS or not isinstance(value, (list, tuple)):
            continue
        if len(value) != n:
            raise InputError(
                f"reward {name!r}: column {key!r} has {len(value)} values but there are {n} completions"
            )


def _group_keys(n: int, columns: dict[str, Any]) -> list[str]:
    """Group of each sample: its prompt_id, else its prompt, else one group for all."""
    if isinstance(columns.get("prompt_id"), (list, tuple)):
        return [str(k) for k in columns["prompt_id"]]
    if isinstance(columns.get("prompts"), (list, tuple)):
        return [_prompt_key(p) for p in columns["prompts"]]
    if isinstance(columns.get("prompt"), (list, tuple)):
        return [_prompt_key(p) for p in columns["prompt"]]
    return ["__all__"] * n


def _world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when not initialised."""
    # A process group can only exist if torch is already imported: never import torch just to ask.
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_compute(
    local: list[Any], compute: Callable[[list[Any]], list[Any]], gather: bool | str
) -> list[Any]:
    """Run ``compute`` over the items of every process and return this process's slice.

    With several processes each one gathers all items (all ranks call this together, as TRL's
    reward step does), computes the same global result, and keeps its own part: exact.
    """
    rank, world = _world()
    if gather is False or world == 1:
        return compute(local)
    import torch.distributed as dist

    everything: list[Any] = [None] * world
    dist.all_gather_object(everything, local)
    flat = [x for part in everything for x in part]
    result = compute(flat)
    start = sum(len(part) for part in everything[:rank])
    return result[start : start + len(local)]


def _log(columns: dict[str, Any], name: str, value: float) -> None:
    """Log a scalar through TRL's ``log_metric`` when the trainer passed one."""
    log_metric = columns.get("log_metric")
    if callable(log_metric):
        try:
            log_metric(name, float(value))
        except Exception:  # noqa: BLE001 - logging must never break the reward
            pass


def _extractor_of(extractor: Any, extractor_options: dict[str, Any] | None) -> Callable[[str], str | None]:
    return get_extractor(extractor, **(extractor_options or {}))


class MajorityVoteReward:
    """TTRL / MM-UPT: 1.0 when a sample's answer equals its group's majority answer, else 0.0.

    Groups are voted online over the completions TRL passes (all processes gathered). Samples of
    a group whose vote abstains get ``abstain_value`` (0.0: constant, so no training signal).
    """

    def __init__(
        self,
        extractor: Any = "last_number",
        extractor_options: dict[str, Any] | None = None,
        *,
        math: bool = False,
        min_valid: int = 1,
        min_share: float = 0.0,
        tie_break: str = "first",
        abstain_value: float | None = 0.0,
        gather: bool | str = "auto",
        name: str = "majority_vote",
    ) -> None:
        self.extract = _extractor_of(extractor, extractor_options)
        self.math = math
        self.vote_options = {"min_valid": min_valid, "min_share": min_share, "tie_break": tie_break}
        majority_vote([], **self.vote_options)  # validate options now, not mid-training
        self.abstain_value = abstain_value
        self.gather = gather
        self.__name__ = name
        self.stats: Counter[str] = Counter()

    def _equal(self) -> Callable[[str, str], bool] | None:
        if not self.math:
            return None
        return lambda a, b: answers_equal(a, b, math=True)

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """Rewards for one batch of completions."""
        check_no_gold(columns, f"reward {self.__name__!r}")
        _check_columns(self.__name__, len(completions), columns)
        keys = _group_keys(len(completions), columns)
        answers = [self.extract(completion_text(c)) for c in completions]
        ratios: list[float] = []

        def compute(items: list[tuple[str, str | None]]) -> list[float | None]:
            groups: dict[str, list[int]] = {}
            for i, (k, _a) in enumerate(items):
                groups.setdefault(k, []).append(i)
            out: list[float | None] = [None] * len(items)
            for idx in groups.values():
                vote = majority_vote([items[i][1] for i in idx], equal=self._equal(), **self.vote_options)
                ratios.append(vote.majority_ratio)
                for j, i in enumerate(idx):
                    if vote.abstained:
                        out[i] = self.abstain_value
                    else:
                        out[i] = 1.0 if vote.agrees(j) else 0.0
                if vote.abstained:
                    self.stats[f"abstained:{vote.reason}"] += 1
            return out

        rewards = _gather_compute(list(zip(keys, answers, strict=True)), compute, self.gather)
        self.stats["samples"] += len(answers)
        self.stats["no_answer"] += sum(a is None for a in answers)
        if ratios:
            _log(columns, f"{self.__name__}/majority_ratio", sum(ratios) / len(ratios))
        return rewards


class ColumnAgreementReward:
    """1.0 when a sample's answer equals a precomputed label column, else 0.0.

    ``pseudo_label`` (TTRL voting over more samples than trained on) and
    ``paraphrase_agreement`` (Co-Reward) are this reward on different columns. A None label
    (the vote abstained) gives ``abstain_value``. Exact on any number of processes.
    """

    def __init__(
        self,
        column: str,
        extractor: Any = "last_number",
        extractor_options: dict[str, Any] | None = None,
        *,
        math: bool = False,
        abstain_value: float | None = 0.0,
        name: str | None = None,
    ) -> None:
        if is_gold_name(column):
            raise LabelLeakError(f"column {column!r} is gold-named; use the 'gold_verifier' reward for gold")
        self.column = column
        self.extract = _extractor_of(extractor, extractor_options)
        self.math = math
        self.abstain_value = abstain_value
        self.__name__ = name or column
        self.stats: Counter[str] = Counter()

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """Rewards for one batch of completions."""
        check_no_gold(columns, f"reward {self.__name__!r}")
        _check_columns(self.__name__, len(completions), columns)
        if self.column not in columns:
            raise InputError(
                f"reward {self.__name__!r} needs a {self.column!r} column (precomputed before training); "
                f"got columns {sorted(k for k in columns if k not in _NON_COLUMNS)}"
            )
        labels = columns[self.column]
        if not isinstance(labels, (list, tuple)):
            labels = [labels] * len(completions)
        out: list[float | None] = []
        for c, label in zip(completions, labels, strict=True):
            if normalize_answer(label) is None:
                self.stats["abstained"] += 1
                out.append(self.abstain_value)
                continue
            answer = self.extract(completion_text(c))
            if answer is None:
                self.stats["no_answer"] += 1
            out.append(1.0 if answers_equal(answer, label, math=self.math) else 0.0)
        self.stats["samples"] += len(completions)
        return out


def pseudo_label_reward(**options: Any) -> ColumnAgreementReward:
    """Agreement with the precomputed ``pseudo_label`` column (TTRL, vote over more samples)."""
    options.setdefault("name", "pseudo_label")
    return ColumnAgreementReward("pseudo_label", **options)


def paraphrase_agreement_reward(**options: Any) -> ColumnAgreementReward:
    """Co-Reward: agreement with the voted label of the paraphrased question (``paraphrase_label``)."""
    options.setdefault("name", "paraphrase_agreement")
    return ColumnAgreementReward("paraphrase_label", **options)


# ---------------------------------------------------------------- embeddings for novelty


def _char_ngrams(text: str, n: int) -> Counter[str]:
    text = f" {text[-MAX_CHARS:]} "
    return Counter(text[i : i + n] for i in range(max(1, len(text) - n + 1)))


def tfidf_embed(texts: Sequence[str], n: int = 3) -> list[dict[str, float]]:
    """Unit-length sparse char n-gram TF-IDF vectors; IDF over ``texts`` (no model needed)."""
    grams = [_char_ngrams(t, n) for t in texts]
    df: Counter[str] = Counter()
    for g in grams:
        df.update(g.keys())
    n_docs = len(texts)
    vecs = []
    for g in grams:
        v = {k: c * (math.log((1 + n_docs) / (1 + df[k])) + 1.0) for k, c in g.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        vecs.append({k: x / norm for k, x in v.items()})
    return vecs


def _cos_sparse(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(x * b.get(k, 0.0) for k, x in a.items())


class HFEmbedder:
    """Mean-pooled last hidden states of a local HF model folder (e.g. the policy's base)."""

    def __init__(self, model_path: str | Path, *, batch_size: int = 8, max_length: int = 512) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path)
        if not path.is_dir():
            raise ConfigError(f"embedding model folder {str(path)!r} does not exist (no hub access)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(str(path), dtype="float32")
        self.model.eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length embeddings, one per text."""
        import torch

        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            batch = [t[-MAX_CHARS:] or " " for t in texts[i : i + self.batch_size]]
            enc = self.tokenizer(
                batch, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
            )
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out.extend(pooled.tolist())
        return out


def _novelty_scores(texts: Sequence[str], embedder: Any) -> list[float]:
    """novelty_i = 1 - mean_j cos(e_i, e_j) over the other members, clipped to [0, 1]."""
    n = len(texts)
    if n < 2:
        return [0.0] * n
    if embedder == "tfidf":
        vecs = tfidf_embed(texts)
        sim = [[_cos_sparse(vecs[i], vecs[j]) for j in range(n)] for i in range(n)]
    else:
        dense = embedder(list(texts))
        sim = [
            [sum(a * b for a, b in zip(dense[i], dense[j], strict=True)) for j in range(n)] for i in range(n)
        ]
    out = []
    for i in range(n):
        mean_cos = sum(sim[i][j] for j in range(n) if j != i) / (n - 1)
        out.append(min(1.0, max(0.0, 1.0 - mean_cos)))
    return out


class NoveltyReward:
    """EVOL-RL: the majority answer is the anchor, novelty varies the reward inside each side.

    Agreeing samples score ``1 - w + w * novelty`` in [1 - w, 1]; disagreeing samples
    ``-1 + w * novelty`` in [-1, -1 + w]; samples with no answer -1. With ``w < 1`` the ranges
    cannot overlap, so novelty never lifts a minority answer above a majority one. Novelty is
    1 - mean cosine similarity to the group's other responses.
    """

    def __init__(
        self,
        extractor: Any = "last_number",
        extractor_options: dict[str, Any] | None = None,
        *,
        embedder: Any = "tfidf",
        novelty_weight: float = 0.5,
        math: bool = False,
        min_valid: int = 1,
        min_share: float = 0.0,
        tie_break: str = "first",
        gather: bool | str = "auto",
        name: str = "novelty",
    ) -> None:
        if not 0.0 <= novelty_weight < 1.0:
            raise ConfigError(f"reward 'novelty': novelty_weight must be in [0, 1), got {novelty_weight!r}")
        self.extract = _extractor_of(extractor, extractor_options)
        if isinstance(embedder, (str, Path)) and embedder != "tfidf":
            embedder = HFEmbedder(embedder)
        elif not (embedder == "tfidf" or callable(embedder)):
            raise ConfigError("reward 'novelty': embedder must be 'tfidf', a model folder, or a callable")
        self.embedder = embedder
        self.w = novelty_weight
        self.math = math
        self.vote_options = {"min_valid": min_valid, "min_share": min_share, "tie_break": tie_break}
        majority_vote([], **self.vote_options)
        self.gather = gather
        self.__name__ = name
        self.stats: Counter[str] = Counter()

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """Rewards for one batch of completions."""
        check_no_gold(columns, f"reward {self.__name__!r}")
        _check_columns(self.__name__, len(completions), columns)
        keys = _group_keys(len(completions), columns)
        texts = [completion_text(c) for c in completions]
        answers = [self.extract(t) for t in texts]
        equal = (lambda a, b: answers_equal(a, b, math=True)) if self.math else None

        def compute(items: list[tuple[str, str | None, str]]) -> list[float | None]:
            groups: dict[str, list[int]] = {}
            for i, item in enumerate(items):
                groups.setdefault(item[0], []).append(i)
            out: list[float | None] = [None] * len(items)
            for idx in groups.values():
                vote = majority_vote([items[i][1] for i in idx], equal=equal, **self.vote_options)
                novelty = _novelty_scores([items[i][2] for i in idx], self.embedder)
                for j, i in enumerate(idx):
                    if vote.abstained:
                        out[i] = 0.0
                    elif vote.agrees(j):
                        out[i] = 1.0 - self.w + self.w * novelty[j]
                    elif items[i][1] is None:
                        out[i] = -1.0
                    else:
                        out[i] = -1.0 + self.w * novelty[j]
                if vote.abstained:
                    self.stats[f"abstained:{vote.reason}"] += 1
            return out

        rewards = _gather_compute(list(zip(keys, answers, texts, strict=True)), compute, self.gather)
        self.stats["samples"] += len(texts)
        self.stats["no_answer"] += sum(a is None for a in answers)
        return rewards


class SelfCertaintyReward:
    """Intuitor / RLIF: mean over completion tokens of KL(uniform || p), z-scored within the group.

    ``model`` is a local HF folder or a model object (with ``tokenizer``). Passing the very
    model object the trainer trains (with its LoRA layers injected in place) scores with the
    current policy, as Intuitor does; a fixed folder scores offline, which is known to be hackable.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        normalize: str = "group",
        batch_size: int = 4,
        gather: bool | str = "auto",
        name: str = "self_certainty",
    ) -> None:
        if normalize not in ("group", "none"):
            raise ConfigError(
                f"reward 'self_certainty': normalize must be 'group' or 'none', got {normalize!r}"
            )
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = Path(model)
            if not path.is_dir():
                raise ConfigError(f"reward 'self_certainty': model folder {str(path)!r} does not exist")
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
            model.eval()
        if tokenizer is None:
            raise ConfigError("reward 'self_certainty': a tokenizer is needed with a model object")
        self.model = model
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.batch_size = batch_size
        self.gather = gather
        self.__name__ = name

    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, (list, tuple)):
            text = self.tokenizer.apply_chat_template(
                list(prompt), tokenize=False, add_generation_prompt=True
            )
        else:
            text = prompt or ""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def raw_scores(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[Any] | None = None
    ) -> list[float | None]:
        """Unnormalised self-certainty per sample (None for an empty completion)."""
        import torch

        seqs: list[tuple[list[int], list[int]]] = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            if completion_ids is not None and completion_ids[i] is not None:
                cids = [int(t) for t in completion_ids[i]]
            else:
                cids = list(self.tokenizer(completion_text(c), add_special_tokens=False)["input_ids"])
            seqs.append((self._prompt_ids(p), cids))
        out: list[float | None] = [None] * len(seqs)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        order = [i for i, (_p, c) in enumerate(seqs) if c]
        for b in range(0, len(order), self.batch_size):
            batch = order[b : b + self.batch_size]
            rows = [seqs[i][0] + seqs[i][1] for i in batch]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            for r, i in enumerate(batch):
                lp, lc = len(seqs[i][0]), len(seqs[i][1])
                # logits at position t predict token t+1: completion tokens are predicted from lp-1 on.
                start = max(lp - 1, 0)
                step_logits = logits[r, start : start + lc]
                logp = torch.log_softmax(step_logits, dim=-1)
                vocab = logp.shape[-1]
                # KL(U || p) = sum_v (1/V) (log(1/V) - log p_v) = -log V - mean_v log p_v
                kl = -math.log(vocab) - logp.mean(dim=-1)
                out[i] = float(kl.mean())
        return out

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """Rewards for one batch of completions."""
        check_no_gold(columns, f"reward {self.__name__!r}")
        _check_columns(self.__name__, len(completions), columns)
        prompts = columns.get("prompts") or columns.get("prompt") or [""] * len(completions)
        raw = self.raw_scores(prompts, completions, columns.get("completion_ids"))
        if self.normalize == "none":
            return raw
        keys = _group_keys(len(completions), columns)

        def compute(items: list[tuple[str, float | None]]) -> list[float | None]:
            groups: dict[str, list[int]] = {}
            for i, (k, _s) in enumerate(items):
                groups.setdefault(k, []).append(i)
            out: list[float | None] = [None] * len(items)
            for idx in groups.values():
                vals = [items[i][1] for i in idx if items[i][1] is not None]
                if not vals:
                    continue
                mean = sum(vals) / len(vals)
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
                for i in idx:
                    s = items[i][1]
                    out[i] = None if s is None else (0.0 if std < 1e-12 else (s - mean) / std)
            return out

        return _gather_compute(list(zip(keys, raw, strict=True)), compute, self.gather)


class GoldVerifierReward:
    """SUPERVISED baseline: 1.0 when the extracted answer equals the gold column, else 0.0.

    Reads gold labels on purpose; never use it on a label-free path. None where gold is missing.
    Equality is ``check(extracted, gold)`` when a checker is given (the loop passes its task's own,
    so the baseline rewards exactly what evaluation counts as correct), else math-verify
    (``math=True``, for math answers) or plain normalised equality (``math=False``). math-verify
    reads non-math answers loosely: "23, 10, 45" equals "10, 23, 45" (a set) and "ACB" equals
    "abc" (a product of symbols), so do not use it for lists or strings.
    """

    supervised = True  # reads gold (see selfimprove.gold.reads_gold)

    def __init__(
        self,
        extractor: Any = "last_number",
        extractor_options: dict[str, Any] | None = None,
        *,
        gold_column: str = "answer",
        math: bool = True,
        check: Callable[[str | None, str], bool] | None = None,
        name: str = "verifier_reward",
    ) -> None:
        if check is not None and not callable(check):
            raise ConfigError(f"reward {name!r}: check must be callable, got {type(check).__name__}")
        self.extract = _extractor_of(extractor, extractor_options)
        self.gold_column = gold_column
        self.math = math
        self.check = check
        self.__name__ = name

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """Rewards for one batch of completions (needs the gold column)."""
        _check_columns(self.__name__, len(completions), columns)
        if self.gold_column not in columns:
            raise InputError(
                f"reward {self.__name__!r} (supervised) needs the gold column {self.gold_column!r}"
            )
        out: list[float | None] = []
        for c, gold in zip(completions, columns[self.gold_column], strict=True):
            if normalize_answer(gold) is None:
                out.append(None)
                continue
            pred = self.extract(completion_text(c))
            if self.check is not None:
                ok = pred is not None and bool(self.check(pred, gold))
            else:
                ok = answers_equal(pred, gold, math=self.math)
            out.append(1.0 if ok else 0.0)
        return out


@supervised_reward
def verifier_reward(**options: Any) -> GoldVerifierReward:
    """The SUPERVISED gold verifier reward (registry name ``gold_verifier``), for baselines."""
    return GoldVerifierReward(**options)


class FormatReward:
    """1.0 when the completion is well-formed, else 0.0.

    Well-formed: the whole completion matches ``pattern`` (DOTALL), or, without a pattern, the
    extractor finds an answer. The pattern sees at most 16k characters.
    """

    def __init__(
        self,
        pattern: str | None = None,
        extractor: Any = "last_number",
        extractor_options: dict[str, Any] | None = None,
        *,
        name: str = "format",
    ) -> None:
        self.rx = None
        if pattern is not None:
            try:
                self.rx = re.compile(pattern, re.DOTALL)
            except re.error as exc:
                raise ConfigError(f"reward 'format': invalid pattern {pattern!r}: {exc}") from None
        self.extract = _extractor_of(extractor, extractor_options)
        self.__name__ = name

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """Rewards for one batch of completions."""
        check_no_gold(columns, f"reward {self.__name__!r}")
        _check_columns(self.__name__, len(completions), columns)
        out: list[float | None] = []
        for c in completions:
            text = completion_text(c)
            if self.rx is not None:
                ok = len(text) <= 4 * MAX_CHARS and self.rx.fullmatch(text) is not None
            else:
                ok = self.extract(text) is not None
            out.append(1.0 if ok else 0.0)
        return out


class LengthReward:
    """0.0 inside [min_length, max_length]; linearly down to -1.0 at 0 / at twice max_length.

    Length in characters, or in tokens (``unit="tokens"``, from TRL's ``completion_ids``).
    """

    def __init__(
        self,
        max_length: int | None = None,
        min_length: int | None = None,
        *,
        unit: str = "chars",
        name: str = "length",
    ) -> None:
        if unit not in ("chars", "tokens"):
            raise ConfigError(f"reward 'length': unit must be 'chars' or 'tokens', got {unit!r}")
        if max_length is None and min_length is None:
            raise ConfigError("reward 'length': give max_length and/or min_length")
        if max_length is not None and max_length < 1:
            raise ConfigError(f"reward 'length': max_length must be >= 1, got {max_length!r}")
        if min_length is not None and min_length < 1:
            raise ConfigError(f"reward 'length': min_length must be >= 1, got {min_length!r}")
        if max_length is not None and min_length is not None and min_length > max_length:
            raise ConfigError("reward 'length': min_length must be <= max_length")
        self.max_length, self.min_length, self.unit = max_length, min_length, unit
        self.__name__ = name

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """Rewards for one batch of completions."""
        check_no_gold(columns, f"reward {self.__name__!r}")
        _check_columns(self.__name__, len(completions), columns)
        ids = columns.get("completion_ids")
        if self.unit == "tokens" and ids is None:
            raise InputError("reward 'length' with unit='tokens' needs the completion_ids column")
        out: list[float | None] = []
        for i, c in enumerate(completions):
            n = len(ids[i]) if self.unit == "tokens" else len(completion_text(c))
            r = 0.0
            if self.max_length is not None and n > self.max_length:
                r = -min(1.0, (n - self.max_length) / self.max_length)
            if self.min_length is not None and n < self.min_length:
                r = -min(1.0, (self.min_length - n) / self.min_length)
            out.append(r)
        return out


def combine_rewards(terms: Sequence[tuple[RewardFunc, float]], *, name: str | None = None) -> RewardFunc:
    """A weighted sum of rewards; None terms are skipped (as TRL does), None only if all are None."""
    terms = list(terms)
    if not terms:
        raise ConfigError("combine_rewards needs at least one (reward, weight) pair")
    for fn, w in terms:
        if not callable(fn) or not isinstance(w, (int, float)):
            raise ConfigError(f"combine_rewards: expected (callable, weight) pairs, got ({fn!r}, {w!r})")

    def combined(completions: Sequence[Any], **columns: Any) -> list[float | None]:
        total: list[float | None] = [None] * len(completions)
        for fn, w in terms:
            values = fn(completions, **columns)
            if len(values) != len(completions):
                raise InputError(f"reward {getattr(fn, '__name__', fn)!r} returned {len(values)} values")
            for i, v in enumerate(values):
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    total[i] = (total[i] or 0.0) + w * v
        return total

    combined.__name__ = name or "+".join(f"{w:g}*{getattr(fn, '__name__', 'reward')}" for fn, w in terms)
    return combined


# name -> factory(**options) -> reward function
REWARDS: dict[str, Callable[..., RewardFunc]] = {
    "majority_vote": MajorityVoteReward,
    "pseudo_label": pseudo_label_reward,
    "novelty": NoveltyReward,
    "paraphrase_agreement": paraphrase_agreement_reward,
    "self_certainty": SelfCertaintyReward,
    "gold_verifier": verifier_reward,
    "format": FormatReward,
    "length": LengthReward,
}
# Known from the registry: a factory marked @supervised_reward reads gold labels.
LABEL_FREE_REWARDS = frozenset(name for name, factory in REWARDS.items() if not reads_gold(factory))


def is_supervised_reward(name: str) -> bool:
    """Whether the registered reward ``name`` reads gold labels (allowed only in ``supervised: true`` runs)."""
    return reads_gold(REWARDS.get(name))


def get_reward(name: str, **options: Any) -> RewardFunc:
    """Build a reward by registry name (or ``"module:function"`` for a user reward)."""
    if not isinstance(name, str):
        raise ConfigError(f"reward name must be a string, got {type(name).__name__}")
    if ":" in name:
        if options:
            raise ConfigError(f"reward {name!r}: a user callable takes no options, got {sorted(options)}")
        return load_callable(name)
    return build_registered("reward", REWARDS, name, user_callables=True, **options)


# ---------------------------------------------------------------- Co-Reward paraphrases

_NUM = re.compile(r"\d+(?:\.\d+)?")


def make_paraphrases(
    generator: Any,
    questions: Sequence[str],
    template: str | None = None,
    *,
    sampling: Any = None,
    check_numbers: bool = True,
    stats: dict[str, int] | None = None,
    progress: bool = False,
) -> list[str | None]:
    """Answer-preserving rewrites of ``questions`` by an LLM through any Generator.

    ``template`` (a str.format string with ``{question}``; default prompts/paraphrase.txt) is
    sent as a user message. With ``check_numbers`` a rewrite that drops or changes a number of
    the question is rejected (None), since it may change the answer. ``stats`` counts outcomes.
    """
    from selfimprove.generate.base import Sampling
    from selfimprove.score.judges import load_prompt

    template = template if template is not None else load_prompt("paraphrase")
    sampling = sampling or Sampling(n=1, temperature=0.7, max_tokens=256)
    counts = Counter()
    prompts = [[{"role": "user", "content": template.format(question=q)}] for q in questions]
    results = generator.generate(prompts, sampling, progress=progress) if prompts else []
    out: list[str | None] = []
    for q, comps in zip(questions, results, strict=True):
        text = comps[0].text if comps and comps[0].finish_reason != "error" else ""
        text = re.sub(r"^\s*(?:rewritten|paraphrased?)\s*(?:question)?\s*:\s*", "", text, flags=re.IGNORECASE)
        text = text.strip().strip('"').strip()
        if not text:
            counts["empty"] += 1
            out.append(None)
        elif check_numbers and sorted(_NUM.findall(q)) != sorted(_NUM.findall(text)):
            counts["numbers_changed"] += 1
            out.append(None)
        else:
            counts["ok"] += 1
            out.append(text)
    if stats is not None:
        for k, v in counts.items():
            stats[k] = stats.get(k, 0) + v
    return out
