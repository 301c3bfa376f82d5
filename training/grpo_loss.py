"""The GRPO objective (DeepSeekMath, section 4.1.2; DeepSeek-R1, section 2.2.1), as pure functions.

For a question q, G responses o_1..o_G are sampled from the old policy and scored r_1..r_G.
Advantage, the same for every token of response i (outcome supervision):

    A_i = (r_i - mean(r)) / (std(r) + eps)        std over the group, population form (divide by G)

Per token t of response i, with ratio rho = pi_theta(o_it) / pi_old(o_it):

    J_it = min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) - beta KL_it
    KL_it = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1        (the k3 estimator: unbiased, >= 0)

Aggregation: "sequence" (the paper): mean over each response's tokens, then mean over responses;
"token": one mean over every response token of the batch (longer responses weigh more). The loss
is -J. `eps_high` > `eps_low` is the asymmetric clip some later recipes use; equal by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADVANTAGE_EPS = 1e-4


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (groups, G) -> advantages (groups, G); a group whose rewards are all equal gets 0."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + ADVANTAGE_EPS)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate: exp(ref - logp) - (ref - logp) - 1."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


@dataclass
class GRPOStats:
    kl: float
    clip_fraction: float  # share of response tokens whose ratio was clipped (the min took the clip)
    ratio_mean: float


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, clip_eps_high: float | None = None, beta: float = 0.0,
              aggregation: str = "sequence", token_normalizer: float | None = None) -> tuple[torch.Tensor, GRPOStats]:
    """logp, old_logp, ref_logp, mask (B, T) over response tokens; advantages (B,) -> (loss, stats).

    `token_normalizer`: for "token" aggregation over several micro-batches, the number of response
    tokens in the whole batch (so the micro-batch losses add up to the batch mean); default: this
    micro-batch's count. Sequence aggregation needs none: each micro-batch is a mean of sequences.
    """
    if aggregation not in ("sequence", "token"):
        raise ValueError(f"aggregation is {aggregation!r}; accepted: 'sequence', 'token'")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    adv = advantages[:, None].to(logp.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + high) * adv
    objective = torch.minimum(unclipped, clipped)  # (B, T)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta:
        objective = objective - beta * kl
    if aggregation == "sequence":
        per_seq = (objective * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B,)
        loss = -per_seq.mean()
    else:
        loss = -(objective * mask).sum() / (token_normalizer or mask.sum().clamp(min=1))
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        stats = GRPOStats(kl=((kl * mask).sum() / n).item(),
                          clip_fraction=(((clipped < unclipped).to(mask.dtype)) * mask).sum().item() / n.item(),
                          ratio_mean=((ratio * mask).sum() / n).item())
    return loss, stats


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, T, V), targets (B, T) -> (log pi(target) (B, T) float32, entropy (B, T) float32).

    pi is softmax(logits / temperature): the distribution the rollouts were sampled from (the
    sampler's log-probs are taken the same way), so ratio and gradient belong to the sampling policy.
    """
    logp_all = (logits.float() / temperature).log_softmax(-1)
    logp = logp_all.gather(-1, targets[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
