"""The DeepSpeed engine every trainer shares: config, optimizer groups, schedule, checkpoints.

- DeepSpeed config: `infra/deepspeed/zero<stage>.json` plus what the profile decides (batch sizes,
  accumulation, clipping, bf16 on GPU / fp32 on CPU).
- Optimizer: a torch AdamW handed to DeepSpeed. NOTE: an optimizer *named* in the DeepSpeed config
  selects DeepSpeed's FusedAdam, which JIT-compiles a CUDA/C++ op; a torch optimizer does not.
  Parameters are grouped by weight decay (no decay for norms, biases, embeddings) and then split so
  that expert parameters sit in their own groups, as DeepSpeed's expert parallelism expects.
- Schedule: linear warmup, then cosine or WSD (stable, then linear decay) to min_lr_ratio.
- Checkpoints: `engine.save_checkpoint` on every rank (DeepSpeed writes model, optimizer, schedule
  and the per-expert files), plus each rank's RNG state and a `complete` marker written last; the
  newest complete tag is what a restart resumes from. The data position is the step counter
  (training/data.py derives every batch from it).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.distributed import Dist, barrier
from training.settings import REPO_ROOT, PretrainConfig

DEEPSPEED_CONFIGS = REPO_ROOT / "infra" / "deepspeed"
COMPLETE = "complete"


def resolved_precision(cfg: PretrainConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


def deepspeed_config(cfg: PretrainConfig, world_size: int, precision: str) -> dict:
    path = DEEPSPEED_CONFIGS / f"zero{cfg.zero_stage}.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    config.update(
        train_batch_size=cfg.global_batch_size,
        train_micro_batch_size_per_gpu=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.global_batch_size // (cfg.micro_batch_size * world_size),
        gradient_clipping=cfg.grad_clip,
    )
    # fp8 keeps bf16 master weights' engine: FP8 lives only inside the matmuls (kernels/).
    # NOTE: no per-parameter overflow check before each step (DeepSpeed's default, kept for fp16's
    # loss scaling): bf16 has fp32's range, and the check launches a few small kernels per parameter
    # tensor every step, which kept the H200 idle for about 100 ms of a 230 ms step on the `small`
    # profile (BENCHMARKS.md). A non-finite loss still stops training (training/pretrain.py).
    config["bf16"] = {"enabled": precision in ("bf16", "fp8"), "check_grad_overflow": False}
    return config


def apply_speed_options(model: nn.Module, cfg: PretrainConfig) -> None:
    """GPU speed options, applied from outside the model before DeepSpeed wraps it (the numerics of
    the CPU path do not change: "auto" attention is the default and compile is opt-in).

    - `attention`: the SDPA kernel of every MLA layer (training/model/attention.py).
    - `compile`: torch.compile per transformer block (regional: one graph per block kind, shared by
      every layer of that kind, so compile time does not grow with depth) and of the loss head
      (lm_head + float32 cross-entropy, the largest memory-bound step). NOTE: shapes stay static
      (the MTP block sees T-1 positions and gets its own graph rather than a dynamic-shape one).
      With `cuda_graphs` too, each compiled block is then captured: inductor's fused kernels and the
      FP8 custom ops replayed in one call.
    """
    from training.model.attention import MLA
    from training.model.model import Block

    for m in model.modules():
        if isinstance(m, MLA):
            m.sdpa_backend = cfg.attention
    if not cfg.compile:
        return
    import torch._dynamo

    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    for m in model.modules():
        if isinstance(m, Block):
            # NOTE: the forward, not the module's __call__ (Module.compile): a CUDA-graph capture
            # (pretrain.cuda_graphs, training/graphs.py) records the compiled forward and then puts its
            # replay in `forward`'s place, which a compiled __call__ would trace as new code
            m.forward = torch.compile(m.forward)
    model._cross_entropy = torch.compile(model._cross_entropy)


def lr_lambda(cfg: PretrainConfig):
    """Multiplier of the peak learning rate at each step."""
    warm, total, floor = cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "wsd":
            decay_start = total - int(cfg.decay_fraction * total)
            if step < decay_start:
                return 1.0
            return 1.0 - (1.0 - floor) * (step - decay_start) / max(1, total - decay_start)
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name or "norm" in name else decay).append(p)
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay},
              {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    # expert parameters (allreduce=False) move to groups of their own, tagged moe=True
    return split_params_into_different_moe_groups_for_optimizer(groups)


def build_engine(model: nn.Module, cfg: PretrainConfig, dist: Dist, precision: str):
    import deepspeed

    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-8,
                                  fused=dist.device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(cfg, dist.world_size, precision))
    return engine, optimizer, scheduler


def release_gradient_accumulators(module: nn.Module) -> None:
    """Let go of the gradient accumulators DeepSpeed's ZeRO 1/2 optimizer keeps alive. training/graphs.py
    calls it right before a capture.

    Why. The optimizer links each parameter to its fp32 master slice with `param.flatten().narrow(...)`
    taken with autograd on (`_hp_mapping.lp_fragment`), so every link holds the parameter's
    AccumulateGrad node, made on the default stream when the engine was built (and again when a
    checkpoint with optimizer states is loaded: the links are made anew). A CUDA graph capture of
    backward (`pretrain.cuda_graphs`) then ends by syncing with that stale stream and fails
    (cudaErrorStreamCaptureImplicit, found on an H100: ZeRO 0 captured, ZeRO 1 did not). DeepSpeed
    reads and writes the link only through `.data`, so a detached view of the same memory serves it
    the same; autograd then makes each accumulator on the stream of the pass that needs it.
    """
    for p in module.parameters():
        mapping = getattr(p, "_hp_mapping", None)
        if mapping is not None:
            mapping.lp_fragment = mapping.lp_fragment.detach()


def optimizer_step(engine, module: nn.Module, measure_norm: bool = False) -> float | None:
    """engine.step() on every micro-step; with `measure_norm` (on the accumulation boundary), also the
    global gradient norm before clipping of the step it takes.

    DeepSpeed's bf16, fp16 and ZeRO optimizers compute that norm inside step() and keep it
    (`get_global_grad_norm`). Before step() it still holds the previous step's: reading it there
    logged every norm one step late (found on the H200). Its plain fp32 path clips without keeping a
    norm: there it is summed from the gradients before step() clears them, expert blocks over their
    expert-parallel group. `kept` is the condition under which DeepSpeed's engine leaves clipping to
    its optimizer instead of clipping fp32 gradients itself (`_take_model_step`).
    """
    kept = engine.bfloat16_enabled() or engine.fp16_enabled() or bool(engine.zero_optimization())
    norm = _gradient_norm(engine, module) if measure_norm and not kept else None
    engine.step()
    if measure_norm and kept:
        norm = float(engine.get_global_grad_norm())
    return norm


def _gradient_norm(engine, module: nn.Module) -> float:
    from training.expert_parallel import ExpertParallelExperts

    total = torch.zeros((), dtype=torch.float64, device=engine.device)
    for p in module.parameters():
        if p.grad is not None and getattr(p, "allreduce", True):
            total += p.grad.double().pow(2).sum()
    for m in module.modules():
        if isinstance(m, ExpertParallelExperts):
            sq = sum(p.grad.double().pow(2).sum() for p in m.parameters() if p.grad is not None)
            sq = torch.as_tensor(sq, dtype=torch.float64, device=engine.device)
            if m.ep_size > 1:
                torch.distributed.all_reduce(sq, group=m.ep_group)
            total = total + sq
    return total.sqrt().item()


# ---------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, ckpt_dir: Path, step: int, dist: Dist, client_state: dict, keep: int) -> Path:
    """Every rank calls this. Returns the tag directory."""
    tag = f"step{step:08d}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={**client_state, "step": step})
    torch.save(_rng_state(), ckpt_dir / tag / f"rng_rank{dist.rank}.pt")
    barrier()
    if dist.is_main:
        (ckpt_dir / tag / COMPLETE).write_text(json.dumps({"step": step}))
        for old in complete_tags(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return ckpt_dir / tag


def complete_tags(ckpt_dir: Path) -> list[Path]:
    """Checkpoint tags whose save finished on every rank, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("step*") if (p / COMPLETE).is_file())


def load_latest(engine, ckpt_dir: Path, dist: Dist) -> dict | None:
    """Resume from the newest complete checkpoint: weights, optimizer, schedule, RNG. Returns its
    client state (with `step`), or None when there is none."""
    tags = complete_tags(ckpt_dir)
    if not tags:
        return None
    tag = tags[-1]
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag.name, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag}")
    rng = tag / f"rng_rank{dist.rank}.pt"
    if rng.is_file():  # absent when resuming with more ranks than saved: fresh streams then
        _set_rng_state(torch.load(rng, weights_only=False))
    return client


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Dense peak FLOP/s of one device, for MFU; None when unknown (CPUs). SEEKFLOW_PEAK_TFLOPS overrides."""
    if os.environ.get("SEEKFLOW_PEAK_TFLOPS"):
        return float(os.environ["SEEKFLOW_PEAK_TFLOPS"]) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = {"H100": (989e12, 1979e12), "H200": (989e12, 1979e12), "H800": (989e12, 1979e12),
             "A100": (312e12, None), "L40S": (362e12, 733e12)}
    for key, (bf16, fp8) in table.items():
        if key in name:
            return fp8 if precision == "fp8" and fp8 else bf16
    return None
