"""The GRPO objective against values computed by hand on a toy policy."""

import math

import pytest
import torch

from training.grpo_loss import group_advantages, grpo_loss, k3_kl, token_logprobs


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    a = group_advantages(r)
    # group 1: mean 0.5, population std 0.5 -> +-1 (eps 1e-4 in the denominator)
    assert a[0].tolist() == pytest.approx([1 / 1.0002, -1 / 1.0002, -1 / 1.0002, 1 / 1.0002], rel=1e-6)
    assert a[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # all equal: no signal, not a division by zero


def test_k3_kl_is_zero_at_equality_and_positive_otherwise():
    lp = torch.log(torch.tensor([0.5, 0.2]))
    ref = torch.log(torch.tensor([0.5, 0.4]))
    kl = k3_kl(lp, ref)
    assert kl[0].item() == pytest.approx(0.0, abs=1e-7)
    assert kl[1].item() == pytest.approx(2.0 - math.log(2.0) - 1.0, rel=1e-6)  # ratio ref/theta = 2


def test_grpo_loss_on_a_toy_policy_by_hand():
    # two responses of 2 and 1 tokens (second row padded); advantages +1 and -1
    old = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.9]]))
    new = torch.log(torch.tensor([[0.7, 0.5], [0.25, 0.9]]))  # token (0,0): ratio 1.4 -> clipped to 1.2
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.9]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -1.0])
    beta = 0.1
    loss, stats = grpo_loss(new, old, ref, adv, mask, clip_eps=0.2, beta=beta, aggregation="sequence")
    kl_00 = 0.5 / 0.7 - math.log(0.5 / 0.7) - 1
    kl_10 = 2.0 - math.log(2.0) - 1
    j0 = ((1.2 - beta * kl_00) + (1.0 - 0.0)) / 2  # min(1.4, 1.2) * (+1), then ratio 1 * (+1)
    j1 = (-1.0 - beta * kl_10) / 1  # ratio 1 * (-1)
    assert loss.item() == pytest.approx(-(j0 + j1) / 2, rel=1e-6)
    assert stats.clip_fraction == pytest.approx(1 / 3)
    assert stats.kl == pytest.approx((kl_00 + 0 + kl_10) / 3, rel=1e-6)

    token_loss, _ = grpo_loss(new, old, ref, adv, mask, clip_eps=0.2, beta=beta, aggregation="token")
    assert token_loss.item() == pytest.approx(-((1.2 - beta * kl_00) + 1.0 + (-1.0 - beta * kl_10)) / 3, rel=1e-6)

    # asymmetric clip: eps_high 0.5 lets ratio 1.4 through
    high, _ = grpo_loss(new, old, None, adv, mask, clip_eps=0.2, clip_eps_high=0.5, beta=0.0)
    assert high.item() == pytest.approx(-((1.4 + 1.0) / 2 + (-1.0)) / 2, rel=1e-6)


def test_negative_advantage_clips_below():
    old = torch.log(torch.tensor([[0.5]]))
    new = torch.log(torch.tensor([[0.2]]))  # ratio 0.4 < 0.8: with A = -1, min(-0.4, -0.8) = -0.8
    loss, stats = grpo_loss(new, old, None, torch.tensor([-1.0]), torch.ones(1, 1), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.8)
    assert stats.clip_fraction == 1.0


def test_gradient_pushes_up_positive_advantage_tokens():
    logits = torch.zeros(1, 1, 3, requires_grad=True)
    logp, entropy = token_logprobs(logits, torch.tensor([[2]]))
    assert entropy.item() == pytest.approx(math.log(3))
    loss, _ = grpo_loss(logp, logp.detach(), None, torch.tensor([1.0]), torch.ones(1, 1))
    loss.backward()
    assert logits.grad[0, 0, 2] < 0 < logits.grad[0, 0, 0]  # descent raises the sampled token's logit
