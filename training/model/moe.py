"""Feed-forward layers: the dense SwiGLU MLP and DeepSeekMoE.

DeepSeekMoE (DeepSeek-V3 report, section 2.1.2): every token goes through `n_shared_experts`
always-on experts plus `num_experts_per_tok` of `n_routed_experts` fine-grained routed experts.

Routing, per token:
  s_i   = sigmoid(u . e_i)                         affinity to expert i (the router `gate`)
  pick  = top-k of (s_i + b_i), only inside the `topk_group` groups whose top-2 (s + b) sum highest
  g_i   = s_i / sum_{picked} s_j x routed_scaling_factor       gating weight (bias NOT included)

Aux-loss-free balancing: the bias b_i only steers selection. After each optimizer step the trainer
calls `update_router_biases` (model.py), which moves every b_i by gamma x sign(mean load - load_i)
outside autograd, from the tokens counted since the previous call. The sequence-wise balance loss
(alpha x sum_i f_i P_i per sequence) is the paper's small safety net; alpha = 0 turns it off.

Dropless: every token reaches all its experts. `Experts.forward` sorts the (token, expert) pairs by
expert and runs `expert_swiglu` over the sorted rows: on a CPU one contiguous slice per expert,
skipping empty ones (the reference); on a Hopper GPU in bf16 one `torch._grouped_mm` per projection
over all experts, with the segment ends computed on the device (no host sync, no Python loop; same
products, summed in another order). Expert weights are stacked (E, out, in) tensors w1 (gate), w3 (up), w2 (down)
with `forward(x, topk_ids, topk_w)`: the interface of kernels/experts.py's `GroupedExperts`, which
a trainer swaps in from outside (same parameters, same state-dict keys) for the grouped GEMM and
FP8. On disk, transformers keeps one `experts.{i}.{gate,up,down}_proj.weight` per expert (hf.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.fp8_linear import FP8Linear, fp8_swiglu
from kernels.routing import expert_counts

from .config import ModelConfig


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The dense FFN and the shared experts."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if all(isinstance(m, FP8Linear) for m in (self.gate_proj, self.up_proj, self.down_proj)):
            # converted to FP8 (kernels/convert.py): one function, x quantized once for gate and up,
            # SwiGLU's product made inside its quantization, gate and up one stacked FP8 weight where
            # their width is a multiple of 128 (kernels/fp8_linear.py gate_up_stacked)
            return fp8_swiglu(x, self.gate_proj, self.up_proj, self.down_proj)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Sigmoid (or softmax) affinities, group-limited top-k, normalised and scaled weights."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        E = cfg.n_routed_experts
        self.weight = nn.Parameter(torch.empty(E, cfg.hidden_size))
        # NOTE: the bias is a buffer (saved, never touched by the optimizer); fp32 so that steps of
        # gamma = 1e-3 are not lost to bf16 rounding.
        self.register_buffer("e_score_correction_bias", torch.zeros(E, dtype=torch.float32))
        # tokens routed to each expert since the last bias update (training forwards only)
        self.register_buffer("tokens_per_expert", torch.zeros(E, dtype=torch.long), persistent=False)

    def _apply(self, fn, recurse=True):
        # NOTE: `model.bfloat16()` would round the bias to bf16 and freeze it (1e-3 steps vanish
        # next to values ~1): keep it fp32 on whatever device the weight moves to.
        bias = self.e_score_correction_bias
        super()._apply(fn, recurse)
        if bias.is_meta and not self.weight.is_meta:  # to_empty() after a meta-device build
            bias = torch.zeros(bias.shape, device=self.weight.device)
        self._buffers["e_score_correction_bias"] = bias.to(self.weight.device, torch.float32)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) -> weights (N, K) fp32, indices (N, K), scores (N, E) fp32."""
        cfg = self.cfg
        E, G, K = cfg.n_routed_experts, cfg.n_group, cfg.num_experts_per_tok
        logits = F.linear(x.float(), self.weight.float())  # (N, E), routing in fp32
        scores = logits.sigmoid() if cfg.scoring_func == "sigmoid" else logits.softmax(dim=-1)
        choice = scores + self.e_score_correction_bias  # the bias only steers selection
        if G > 1:
            group_scores = choice.view(-1, G, E // G).topk(2, dim=-1).values.sum(-1)  # (N, G)
            top_groups = group_scores.topk(cfg.topk_group, dim=-1).indices  # (N, topk_group)
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, top_groups, True)
            keep = keep[:, :, None].expand(-1, G, E // G).reshape(-1, E)  # (N, E)
            choice = choice.masked_fill(~keep, float("-inf"))
        indices = choice.topk(K, dim=-1).indices  # (N, K)
        weights = scores.gather(1, indices)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * cfg.routed_scaling_factor
        if self.training:
            with torch.no_grad():
                self.tokens_per_expert += expert_counts(indices.flatten(), E)
        return weights, indices, scores


class Experts(nn.Module):
    """n_routed_experts SwiGLU experts as stacked weights; a dropless sorted pass."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, D, I = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        # NOTE: DeepSeek's names and kernels/experts.py's interface: w1 gate, w3 up, w2 down
        self.w1 = nn.Parameter(torch.empty(E, I, D))
        self.w3 = nn.Parameter(torch.empty(E, I, D))
        self.w2 = nn.Parameter(torch.empty(E, D, I))

    def forward(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (N, D), indices/weights (N, K) -> sum_k weights[:, k] * expert_{indices[:, k]}(x), (N, D)."""
        N, K = indices.shape
        if N == 0:
            return torch.zeros_like(x)
        flat = indices.flatten()  # (N*K,) expert of each (token, slot) pair
        order = flat.argsort(stable=True)  # pairs grouped by expert
        token = order // K  # (N*K,) token of each sorted pair
        ys = expert_swiglu(x[token], flat[order], self.w1, self.w2, self.w3)  # (N*K, D), sorted by expert
        ys = ys * weights.flatten()[order, None].to(x.dtype)
        return torch.zeros_like(x).index_add_(0, token, ys)


def use_grouped_mm(x: torch.Tensor, w: torch.Tensor) -> bool:
    """torch._grouped_mm's CUTLASS kernel: bf16 on a Hopper (sm_90+) GPU."""
    return (x.is_cuda and x.dtype == w.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
            and torch.cuda.get_device_capability(x.device) >= (9, 0))


def expert_swiglu(xs: torch.Tensor, expert: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                  w3: torch.Tensor) -> torch.Tensor:
    """xs (M, D) rows sorted by `expert` (M,) (ascending) -> (M, D): w2[e] @ (silu(w1[e] x) * w3[e] x).

    w1, w3 (E, I, D), w2 (E, D, I). Grouped GEMM where it runs (see `use_grouped_mm`), else one
    slice per non-empty expert."""
    E = w1.shape[0]
    counts = expert_counts(expert, E)
    if use_grouped_mm(xs, w1):
        ends = counts.cumsum(0).to(torch.int32)  # (E,) end row of each expert's segment, on the device
        # mat_b is the (E, in, out) transposed view of the stacked (E, out, in) weights: no copy
        h = F.silu(torch._grouped_mm(xs, w1.transpose(1, 2), offs=ends)) * torch._grouped_mm(
            xs, w3.transpose(1, 2), offs=ends)  # (M, I)
        return torch._grouped_mm(h, w2.transpose(1, 2), offs=ends)  # (M, D)
    outs, start = [], 0
    for e, n in enumerate(counts.tolist()):  # NOTE: one host sync per layer for the split sizes
        if n == 0:
            continue  # an empty expert costs nothing
        h = xs[start : start + n]  # (n, D)
        h = F.silu(h @ w1[e].T) * (h @ w3[e].T)  # (n, I)
        outs.append(h @ w2[e].T)  # (n, D)
        start += n
    return torch.cat(outs) if outs else xs[:0]


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = Experts(cfg)
        self.shared_experts = (
            MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)
            if cfg.n_shared_experts > 0 else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> y (B, T, D), sequence-wise balance loss (scalar, 0 when off or in eval)."""
        B, T, D = x.shape
        flat = x.reshape(B * T, D)
        weights, indices, scores = self.gate(flat)
        y = self.experts(flat, indices, weights).view(B, T, D)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        balance = x.new_zeros((), dtype=torch.float32)
        if self.training and self.cfg.seq_aux_loss_alpha > 0:
            balance = self.sequence_balance_loss(scores.view(B, T, -1), indices.view(B, T, -1))
        return y, balance

    def sequence_balance_loss(self, scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """alpha * mean over sequences of sum_i f_i P_i (report eq. 17-20).
        scores (B, T, E) affinities, indices (B, T, K) selected experts."""
        cfg = self.cfg
        B, T, E = scores.shape
        K = indices.shape[-1]
        with torch.no_grad():  # f_i: fraction of the sequence's tokens routed to i, x E / K
            counts = torch.zeros(B, E, device=scores.device).scatter_add_(
                1, indices.reshape(B, T * K), torch.ones(B, T * K, device=scores.device)
            )
            f = counts * E / (K * T)
        p = (scores / scores.sum(-1, keepdim=True)).mean(dim=1)  # (B, E) P_i
        return cfg.seq_aux_loss_alpha * (f * p).sum(-1).mean()

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor | None = None) -> torch.Tensor:
        """b_i += gamma * sign(mean load - load_i); resets the counters. Returns the load used.

        `load` defaults to this process's counters; under data parallelism pass the all-reduced
        counts (model.update_router_biases does) so every rank applies the same step."""
        load = (self.gate.tokens_per_expert if load is None else load).float()
        if load.sum() > 0:
            step = self.cfg.bias_update_speed * torch.sign(load.mean() - load)
            self.gate.e_score_correction_bias += step.to(self.gate.e_score_correction_bias.dtype)
        self.gate.tokens_per_expert.zero_()
        return load
