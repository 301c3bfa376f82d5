"""Expert parallelism on DeepSpeed's expert-parallel groups, for training/model's DeepSeekMoE.

What it does. With `ep_size` = P, the routed experts of every MoE layer are split into P contiguous
blocks of E/P experts; rank r of an expert-parallel group holds block r. Routing stays replicated
(every rank scores all E experts for its own tokens). Each layer then:

  sort the (token, expert) pairs by expert      -> pairs for block 0, block 1, ... (contiguous)
  all-to-all the token rows to the block owners  (counts exchanged first: splits are uneven)
  run the local experts on what arrived          (one contiguous slice per local expert)
  all-to-all the outputs back, weight and sum    (inverse permutation, weighted combine)

Both all-to-alls are autograd-aware (torch.distributed.nn), so the backward pass sends gradients
the same way in reverse. On CPU this runs over gloo, on GPUs over NCCL.

How DeepSpeed sees it. The wrapper subclasses DeepSpeed's own `MoE` layer, so the engine treats it
as an MoE layer: its parameters are marked `allreduce=False` with `group_name = ep_size_<P>`,
their gradients are averaged over the expert-data-parallel group only, the optimizer gets them in
their own parameter groups (`split_params_into_different_moe_groups_for_optimizer`), and
checkpoints write them to DeepSpeed's per-expert files. NOTE: DeepSpeed's unit of placement is
"one expert"; here it is one rank's block of E/P experts stored as stacked (E/P, out, in) tensors
(so a grouped GEMM can run over them), presented to DeepSpeed as `num_experts = P` experts of
which each rank holds one. Its GShard gate and capacity-based dispatch are not used: DeepSeek-V3
routes with sigmoid affinities, a balancing bias and group limits (training/model/moe.py) and drops
no token.

The same wrapper serves P = 1 (no communication), so a checkpoint has one layout at every P.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from deepspeed.moe.layer import MoE as DeepSpeedMoE
from deepspeed.utils import groups
from torch import nn
from torch.distributed.nn.functional import all_to_all_single

from kernels.experts import grouped_swiglu
from kernels.routing import expert_counts
from training.model.moe import Experts, MoE, expert_swiglu

MOE_PREFIX = "deepspeed_moe.experts.deepspeed_experts.0."  # DeepSpeed's per-expert key layout


def group_name(ep_size: int) -> str:
    return f"ep_size_{ep_size}"


def create_groups(ep_size: int) -> None:
    """DeepSpeed's expert-parallel and expert-data-parallel groups (collective: every rank calls it)."""
    if group_name(ep_size) not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)


def swiglu_experts(h: torch.Tensor, expert: torch.Tensor, w1, w2, w3, fp8: str | None = None) -> torch.Tensor:
    """h (M, D) rows for local experts `expert` (M,), in any order -> (M, D), in the same order.

    fp8: None (the model's own `expert_swiglu`: grouped GEMM on Hopper in bf16, a per-expert loop
    elsewhere), "gpu" or "emulate" (kernels/experts.py's FP8 grouped GEMM, or its CPU emulation)."""
    if fp8 is not None:  # the kernel permutes by expert itself (128-row aligned segments)
        ones = torch.ones((h.shape[0], 1), dtype=torch.float32, device=h.device)
        return grouped_swiglu(h, expert[:, None], ones, w1, w2, w3, fp8=True, emulate=fp8 == "emulate")
    order = expert.argsort(stable=True)
    out = expert_swiglu(h[order], expert[order], w1, w2, w3)
    return torch.empty_like(out).index_copy_(0, order, out)  # back to the arrival order


class LocalExperts(nn.Module):
    """This rank's block of experts: stacked (E/P, out, in) weights, DeepSpeed expert params."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor, ep_size: int):
        super().__init__()
        self.w1, self.w2, self.w3 = (nn.Parameter(w.detach().clone()) for w in (w1, w2, w3))
        for p in self.parameters():
            p.allreduce = False  # DeepSpeed: reduce over the expert-data-parallel group only
            p.group_name = group_name(ep_size)


class ExpertParallelExperts(DeepSpeedMoE):
    """Drop-in for `Experts` (same forward signature) with the experts spread over P ranks."""

    def __init__(self, experts: Experts, ep_size: int):
        nn.Module.__init__(self)  # NOTE: not DeepSpeedMoE.__init__: it would build a GShard gate
        E = experts.w1.shape[0]
        if E % ep_size:
            raise ValueError(f"pretrain.ep_size ({ep_size}) must divide model.n_routed_experts ({E})")
        self.ep_size, self.n_experts, self.n_local = ep_size, E, E // ep_size
        self.expert_group_name = group_name(ep_size)
        self.num_experts, self.num_local_experts = ep_size, 1  # DeepSpeed's view: one block per rank
        self.enable_expert_tensor_parallelism = False
        create_groups(ep_size)
        self.ep_group = groups._get_expert_parallel_group(self.expert_group_name)
        self.ep_rank = dist.get_rank(self.ep_group) if ep_size > 1 else 0
        lo, hi = self.ep_rank * self.n_local, (self.ep_rank + 1) * self.n_local
        block = LocalExperts(experts.w1[lo:hi], experts.w2[lo:hi], experts.w3[lo:hi], ep_size)
        # DeepSpeed's key layout: <layer>.deepspeed_moe.experts.deepspeed_experts.<i>.<param>
        self.deepspeed_moe = nn.Module()
        self.deepspeed_moe.experts = nn.Module()
        self.deepspeed_moe.experts.deepspeed_experts = nn.ModuleList([block])
        # None: bf16/fp32 experts; "gpu" / "emulate": FP8 grouped GEMM (set by `use_fp8_experts`)
        self.fp8: str | None = None

    def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False) -> None:
        create_groups(self.ep_size)  # already done in __init__; the engine calls this on MoE layers

    @property
    def block(self) -> LocalExperts:
        return self.deepspeed_moe.experts.deepspeed_experts[0]

    def forward(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (N, D), indices/weights (N, K) with global expert ids -> (N, D)."""
        N, K = indices.shape
        b = self.block
        if self.ep_size == 1 and self.fp8 is not None:
            # NOTE: the FP8 grouped GEMM sorts, permutes into its 128-row segments and combines with
            # the gating weights itself: one dispatch. Gathering the sorted rows here first, as below,
            # made it two (a sort, a gather and a scatter-add of (N*K, D) more per layer).
            return grouped_swiglu(x, indices, weights, b.w1, b.w2, b.w3, fp8=True, emulate=self.fp8 == "emulate")
        flat = indices.flatten()  # (N*K,)
        order = flat.argsort(stable=True)  # pairs grouped by expert, so by owner rank too
        token, expert = order // K, flat[order]
        xs = x[token]  # (N*K, D)
        if self.ep_size == 1:
            ys = expert_swiglu(xs, expert, b.w1, b.w2, b.w3)  # already sorted by expert
        else:
            ys = self._exchange(xs, expert)
        ys = ys * weights.flatten()[order, None].to(x.dtype)
        return torch.zeros_like(x).index_add_(0, token, ys)

    @torch.compiler.disable  # uneven splits are read on the host: an eager island under torch.compile
    def _exchange(self, xs: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        P, group = self.ep_size, self.ep_group
        owner = expert // self.n_local  # (M,) destination rank in the EP group
        send = expert_counts(owner, P)  # (P,) rows to each rank
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)  # how many rows arrive from each rank
        send_l, recv_l = send.tolist(), recv.tolist()
        local_ids = torch.empty(sum(recv_l), dtype=expert.dtype, device=expert.device)
        dist.all_to_all_single(local_ids, expert - owner * self.n_local, recv_l, send_l, group=group)
        arrived = xs.new_empty(sum(recv_l), xs.shape[1])
        arrived = all_to_all_single(arrived, xs.contiguous(), recv_l, send_l, group=group)
        b = self.block
        out = swiglu_experts(arrived, local_ids, b.w1, b.w2, b.w3, self.fp8)
        back = xs.new_empty(xs.shape)
        return all_to_all_single(back, out.contiguous(), send_l, recv_l, group=group)


def apply_expert_parallel(model: nn.Module, ep_size: int) -> int:
    """Swap every MoE layer's `experts` for an ExpertParallelExperts; returns the layers converted.

    Every rank must have built the same full model (same seed) before: each keeps its own block."""
    n = 0
    for module in model.modules():
        if isinstance(module, MoE) and isinstance(module.experts, Experts):
            module.experts = ExpertParallelExperts(module.experts, ep_size)
            n += 1
    return n


def use_fp8_experts(model: nn.Module, emulate: bool) -> int:
    """Run every ExpertParallelExperts' local experts on the FP8 grouped GEMM (kernels/experts.py),
    after `kernels.convert.convert_to_fp8` has converted the linears (it leaves these blocks alone:
    their forward is the wrapper's, not a GroupedExperts'). Same parameters; returns the count."""
    n = 0
    for m in model.modules():
        if isinstance(m, ExpertParallelExperts):
            m.fp8 = "emulate" if emulate else "gpu"
            n += 1
    return n


@torch.no_grad()
def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the plain (single-device) model: expert blocks gathered from every EP rank
    and renamed back to `...experts.w1` etc. Collective: every rank must call it."""
    out = {k: v for k, v in model.state_dict().items() if MOE_PREFIX not in k}
    for name, module in model.named_modules():
        if not isinstance(module, ExpertParallelExperts):
            continue
        for w in ("w1", "w2", "w3"):
            local = getattr(module.block, w).detach()
            if module.ep_size > 1:
                parts = [torch.empty_like(local) for _ in range(module.ep_size)]
                dist.all_gather(parts, local.contiguous(), group=module.ep_group)
                local = torch.cat(parts)
            out[f"{name}.{w}"] = local.cpu()
    return out
