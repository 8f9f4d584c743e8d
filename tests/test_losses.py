"""The toolkit's preference losses against hand computations on a fixed batch."""

from __future__ import annotations

import math

import pytest
import torch

from selfimprove.train.losses import (
    chosen_nll,
    d2o_loss,
    degree_weights,
    dpo_sigmoid_loss,
    preference_loss,
    spo_degree_gap_loss,
    spo_degree_paper_loss,
)

CHOSEN = torch.tensor([1.0, -0.5, 2.0])  # log pi/pi_ref of the chosen completions
REJECTED = torch.tensor([-1.0, 0.5, 2.0])
DEGREE = torch.tensor([1.0, 0.5, 0.0])
BETA = 0.5


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_sigmoid_by_hand():
    # beta * delta = 0.5 * [2, -1, 0] = [1, -0.5, 0]
    expected = [-log_sigmoid(1.0), -log_sigmoid(-0.5), math.log(2)]
    assert dpo_sigmoid_loss(CHOSEN, REJECTED, BETA).tolist() == pytest.approx(expected, rel=1e-6)


def test_d2o_by_hand():
    pos = torch.tensor([[1.0, 3.0], [0.0, -2.0]])  # K = 2 self-generated responses per prompt
    neg = torch.tensor([0.5, -1.0])
    # beta/K * sum - alpha * neg: 0.25 * 4 - 0.2 * 0.5 = 0.9 ; 0.25 * -2 - 0.2 * -1 = -0.3
    got = d2o_loss(pos, neg, beta=0.5, alpha=0.2).tolist()
    assert got == pytest.approx([-log_sigmoid(0.9), -log_sigmoid(-0.3)], rel=1e-6)
    # K = 1 with alpha = beta is the DPO sigmoid loss.
    assert torch.allclose(d2o_loss(CHOSEN, REJECTED, BETA), dpo_sigmoid_loss(CHOSEN, REJECTED, BETA))


def test_degree_target_by_hand():
    # z = [1, -0.5, 0], target = 0.5 + 0.5 * degree = [1, 0.75, 0.5]
    z = [1.0, -0.5, 0.0]
    t = [1.0, 0.75, 0.5]
    expected = [-(ti * log_sigmoid(zi) + (1 - ti) * log_sigmoid(-zi)) for zi, ti in zip(z, t, strict=True)]
    got = spo_degree_gap_loss(CHOSEN, REJECTED, DEGREE, BETA).tolist()
    assert got == pytest.approx(expected, rel=1e-6)
    # The term is smallest where sigmoid(z) equals the target: degree 0.5 -> z = logit(0.75).
    zs = torch.linspace(-3, 3, 601)
    losses = spo_degree_gap_loss(zs, torch.zeros_like(zs), torch.full_like(zs, 0.5), beta=1.0)
    assert zs[losses.argmin()].item() == pytest.approx(math.log(3), abs=0.01)


def test_d2o_mask_averages_over_each_rows_own_positives():
    pos = torch.tensor([[1.0, 3.0, 9.0], [0.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    neg = torch.tensor([0.5, -1.0])
    # Row 0: K = 2, 0.5/2 * (1 + 3) - 0.5 * 0.5 = 0.75; row 1: K = 1, 0.5 * 0 - 0.5 * -1 = 0.5.
    got = d2o_loss(pos, neg, beta=0.5, positive_mask=mask).tolist()
    assert got == pytest.approx([-log_sigmoid(0.75), -log_sigmoid(0.5)], rel=1e-6)


def test_spo_degree_paper_loss_by_hand():
    # Two degraded responses, three intensity classes.
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    labels = torch.tensor([0, 2])
    # -log softmax: row 0 class 0: log(e^2 + 2) - 2; row 1 class 2: log(1 + e + e^-1) + 1.
    by_hand = ((math.log(math.exp(2) + 2) - 2) + (math.log(1 + math.e + math.exp(-1)) + 1)) / 2
    assert spo_degree_paper_loss(logits, labels).item() == pytest.approx(by_hand, rel=1e-6)
    # Uniform logits: log(C), the first-step value of a zero-initialised classifier.
    assert spo_degree_paper_loss(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])).item() == pytest.approx(
        math.log(3), rel=1e-6
    )


def test_preference_loss_adds_the_paper_degree_term_with_its_weight():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    labels = torch.tensor([0, 2])
    ce = (math.log(math.exp(2) + 2) - 2 + math.log(1 + math.e + math.exp(-1)) + 1) / 2
    dpo = dpo_sigmoid_loss(CHOSEN, REJECTED, BETA).mean().item()
    loss, parts = preference_loss(
        CHOSEN,
        REJECTED,
        beta=BETA,
        degree_paper_logits=logits,
        degree_paper_labels=labels,
        degree_paper_weight=0.3,
    )
    assert loss.item() == pytest.approx(dpo + 0.3 * ce, rel=1e-6)
    assert parts["degree_paper"].item() == pytest.approx(ce, rel=1e-6)
    # Both SPO terms at once: gap-based (regress) and the paper's add up.
    gap = spo_degree_gap_loss(CHOSEN, REJECTED, DEGREE, BETA).mean().item()
    both, parts = preference_loss(
        CHOSEN,
        REJECTED,
        beta=BETA,
        degree=DEGREE,
        degree_weight=0.5,
        degree_paper_logits=logits,
        degree_paper_labels=labels,
        degree_paper_weight=0.3,
    )
    assert both.item() == pytest.approx(dpo + 0.5 * gap + 0.3 * ce, rel=1e-6)
    with pytest.raises(ValueError, match="degree classifier's logits"):
        preference_loss(CHOSEN, REJECTED, beta=BETA, degree_paper_weight=0.3)


def test_preference_loss_d2o_with_positives():
    pos = torch.tensor([[1.0, 3.0, 0.0], [-0.5, 0.0, 0.0], [2.0, 2.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    loss, parts = preference_loss(
        CHOSEN,
        REJECTED,
        beta=BETA,
        loss_types=("d2o",),
        d2o_positive_logratios=pos,
        d2o_positive_mask=mask,
    )
    # 0.5 * mean(positives) - 0.5 * rejected: [1 + 0.5, -0.25 - 0.25, 4/3 - 1]
    z = [1.5, -0.5, 0.5 * 8 / 3 - 1.0]
    assert loss.item() == pytest.approx(sum(-log_sigmoid(x) for x in z) / 3, rel=1e-6)


def test_degree_weights_and_nll():
    assert degree_weights(DEGREE, 0.0).tolist() == [1.0, 1.0, 1.0]
    assert degree_weights(DEGREE, 1.0).tolist() == [1.0, 0.5, 0.0]
    assert degree_weights(DEGREE, 0.5).tolist() == [1.0, 0.75, 0.5]
    logps = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert chosen_nll(logps, mask).item() == pytest.approx((1 + 2 + 3) / 3)


@pytest.mark.parametrize(
    "mode, weight, expected",
    [
        # weight: mean(d_i * L_i); regress: mean(L_i) + w * mean(T_i); both: mean(c_i * L_i) + w * mean(T_i)
        ("weight", 1.0, lambda L, T: (1.0 * L[0] + 0.5 * L[1] + 0.0 * L[2]) / 3),
        ("regress", 2.0, lambda L, T: sum(L) / 3 + 2.0 * sum(T) / 3),
        ("both", 0.5, lambda L, T: (1.0 * L[0] + 0.75 * L[1] + 0.5 * L[2]) / 3 + 0.5 * sum(T) / 3),
    ],
)
def test_preference_loss_combination(mode, weight, expected):
    L = dpo_sigmoid_loss(CHOSEN, REJECTED, BETA).tolist()
    T = spo_degree_gap_loss(CHOSEN, REJECTED, DEGREE, BETA).tolist()
    loss, parts = preference_loss(
        CHOSEN, REJECTED, beta=BETA, degree=DEGREE, degree_weight=weight, degree_mode=mode
    )
    assert loss.item() == pytest.approx(expected(L, T), rel=1e-6)
    assert ("degree" in parts) == (mode != "weight")


def test_preference_loss_weights_and_errors():
    loss, parts = preference_loss(
        CHOSEN, REJECTED, beta=BETA, loss_types=("sigmoid", "d2o"), loss_weights=(1.0, 3.0)
    )
    L = dpo_sigmoid_loss(CHOSEN, REJECTED, BETA).mean().item()
    assert loss.item() == pytest.approx(4 * L, rel=1e-6)
    with pytest.raises(ValueError, match="needs a per-pair degree"):
        preference_loss(CHOSEN, REJECTED, beta=BETA, degree_weight=1.0)
    with pytest.raises(ValueError, match="not one of the toolkit"):
        preference_loss(CHOSEN, REJECTED, beta=BETA, loss_types=("ipo",))
    with pytest.raises(ValueError, match="degree_mode"):
        preference_loss(CHOSEN, REJECTED, beta=BETA, degree=DEGREE, degree_weight=1.0, degree_mode="x")


def test_gradients_flow_to_both_logratios():
    c = CHOSEN.clone().requires_grad_(True)
    r = REJECTED.clone().requires_grad_(True)
    loss, _ = preference_loss(c, r, beta=BETA, degree=DEGREE, degree_weight=1.0, degree_mode="both")
    loss.backward()
    # Raising the chosen log-ratio lowers the loss, raising the rejected one raises it.
    assert (c.grad[:2] < 0).all() and (r.grad[:2] > 0).all()
