"""Preference losses TRL lacks, as pure tensor functions (checked by hand in tests/test_losses.py).

Notation: for a pair (x, y_w, y_l), ``logratio(y) = log pi_theta(y|x) - log pi_ref(y|x)`` summed
over the completion tokens; ``delta = logratio(y_w) - logratio(y_l)``; beta is DPO's temperature.

- ``dpo_sigmoid_loss``: -log sigmoid(beta * delta) (standard DPO; also TRL's "sigmoid").
- ``d2o_loss`` (negatives only, D2O): -log sigmoid(beta/K * sum_k logratio(y_k) - alpha * logratio(y_neg)),
  with y_k self-generated responses and y_neg a known-bad one; alpha defaults to beta. A mask
  allows a different K per prompt (the mean runs over the valid y_k).

Two preference-degree terms of SPO (Self-supervised Preference Optimization, arXiv 2409.17791),
kept apart by name:

- ``spo_degree_gap_loss`` (**spo_degree_gap**, the toolkit's adaptation; ``degree_weight``):
  binary cross-entropy between the implicit preference probability sigmoid(beta * delta) and the
  target 0.5 + 0.5 * degree, where the degree is the vote-share or judge-score gap the scorer
  measured. Its minimum is at beta * delta = logit(0.5 + 0.5 * degree): a pair preferred with
  degree 0 is pushed to indifference, degree 1 to certainty; the implicit reward margin is
  regressed onto the degree (in logit space). ``degree_weights``: per-pair weights
  (1 - w) + w * degree that scale a per-pair loss, so weakly preferred pairs move the model less.
- ``spo_degree_paper_loss`` (**spo_degree_paper**, the paper's construction;
  ``degree_paper_weight``): cross-entropy of a classifier on the policy's representation of
  degraded responses (key content removed at several intensities, ``selfimprove.data.degrade``)
  against the intensity label. The trainer adds ``degree_paper_weight`` times it to the alignment
  loss: L = L_align + lambda * L_degree, as the paper combines them.
- ``chosen_nll``: mean negative log-likelihood per chosen token (DPO + NLL, against the
  gradient entanglement where margin losses lower the chosen log-prob).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEGREE_MODES = ("weight", "regress", "both")
CUSTOM_LOSS_TYPES = ("sigmoid", "d2o")


def dpo_sigmoid_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-pair DPO loss -log sigmoid(beta * (chosen - rejected))."""
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))


def d2o_loss(
    positive_logratios: torch.Tensor,
    negative_logratios: torch.Tensor,
    beta: float,
    alpha: float | None = None,
    positive_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-prompt D2O loss; ``positive_logratios`` is (B,) or (B, K), ``negative_logratios`` is (B,).

    ``positive_mask`` (B, K), 1 = a real positive: rows with fewer than K positives average over
    their own (beta/K_i * sum), padded entries count for nothing.
    """
    if positive_logratios.dim() == 1:
        positive_logratios = positive_logratios.unsqueeze(1)
    if positive_mask is None:
        positive_mask = torch.ones_like(positive_logratios)
    mask = positive_mask.to(positive_logratios.dtype)
    k = mask.sum(dim=1).clamp(min=1.0)
    alpha = beta if alpha is None else alpha
    return -F.logsigmoid(beta / k * (positive_logratios * mask).sum(dim=1) - alpha * negative_logratios)


def spo_degree_gap_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, degree: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-pair BCE between sigmoid(beta * delta) and the target preference 0.5 + 0.5 * degree."""
    z = beta * (chosen_logratios - rejected_logratios)
    target = 0.5 + 0.5 * degree.to(z.dtype).clamp(0.0, 1.0)
    return -(target * F.logsigmoid(z) + (1.0 - target) * F.logsigmoid(-z))


def spo_degree_paper_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the degree classifier: ``logits`` (N, C) over intensity classes, ``labels`` (N,)."""
    return F.cross_entropy(logits, labels.long())


def degree_weights(degree: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pair weights (1 - weight) + weight * degree (weight 0: all ones; 1: the degree itself)."""
    return (1.0 - weight) + weight * degree.clamp(0.0, 1.0)


def chosen_nll(chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the chosen completions' tokens (mask 1 = completion token)."""
    mask = chosen_mask.to(chosen_token_logps.dtype)
    return -(chosen_token_logps * mask).sum() / mask.sum().clamp(min=1.0)


def preference_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    loss_types: tuple[str, ...] = ("sigmoid",),
    loss_weights: tuple[float, ...] | None = None,
    degree: torch.Tensor | None = None,
    degree_weight: float = 0.0,
    degree_mode: str = "regress",
    d2o_alpha: float | None = None,
    d2o_positive_logratios: torch.Tensor | None = None,
    d2o_positive_mask: torch.Tensor | None = None,
    degree_paper_logits: torch.Tensor | None = None,
    degree_paper_labels: torch.Tensor | None = None,
    degree_paper_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The toolkit's DPO-family loss for a batch of pairs; returns (scalar loss, named parts).

    loss = sum_t w_t * mean_i(c_i * L_t,i) + [degree_weight * mean_i(spo_degree_gap_loss_i)]
           + [degree_paper_weight * spo_degree_paper_loss(logits, labels)]
    where c_i = degree_weights(degree_i, degree_weight) in modes "weight"/"both" (else 1) and the
    first bracket is present in modes "regress"/"both". D2O's positives are
    ``d2o_positive_logratios`` (B, K) with their mask when given, else the chosen log-ratios
    (K = 1). The NLL term is added by the trainer.
    """
    weights = loss_weights or (1.0,) * len(loss_types)
    if len(weights) != len(loss_types):
        raise ValueError(f"loss_weights has {len(weights)} entries for {len(loss_types)} loss types")
    if degree_mode not in DEGREE_MODES:
        raise ValueError(f"degree_mode must be one of {list(DEGREE_MODES)}, got {degree_mode!r}")
    use_degree = degree_weight > 0
    if use_degree and degree is None:
        raise ValueError("degree_weight > 0 needs a per-pair degree (a 'degree' column in the pairs)")
    scale = (
        degree_weights(degree, degree_weight)
        if use_degree and degree_mode in ("weight", "both")
        else torch.ones_like(chosen_logratios)
    )
    parts: dict[str, torch.Tensor] = {}
    total = chosen_logratios.new_zeros(())
    for loss_type, w in zip(loss_types, weights, strict=True):
        if loss_type == "sigmoid":
            per_pair = dpo_sigmoid_loss(chosen_logratios, rejected_logratios, beta)
        elif loss_type == "d2o":
            positives = chosen_logratios if d2o_positive_logratios is None else d2o_positive_logratios
            per_pair = d2o_loss(positives, rejected_logratios, beta, d2o_alpha, d2o_positive_mask)
        else:
            raise ValueError(f"loss type {loss_type!r} is not one of the toolkit's {list(CUSTOM_LOSS_TYPES)}")
        term = (scale * per_pair).mean()
        parts[loss_type] = term.detach()
        total = total + w * term
    if use_degree and degree_mode in ("regress", "both"):
        term = spo_degree_gap_loss(chosen_logratios, rejected_logratios, degree, beta).mean()
        parts["degree"] = term.detach()
        total = total + degree_weight * term
    if degree_paper_weight > 0:
        if degree_paper_logits is None or degree_paper_labels is None:
            raise ValueError("degree_paper_weight > 0 needs the degree classifier's logits and labels")
        term = spo_degree_paper_loss(degree_paper_logits, degree_paper_labels)
        parts["degree_paper"] = term.detach()
        total = total + degree_paper_weight * term
    return total, parts
