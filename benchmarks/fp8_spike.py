"""Diagnosis of the FP8 loss spikes (BENCHMARKS.md 2026-11-30: one-step loss jumps, not reproducible
with the same seed and batches, larger in FP8 than in BF16).

    python benchmarks/fp8_spike.py run CONFIG.json OUT.json     (GPU: the real trainer, instrumented)
    python benchmarks/fp8_spike.py summary OUT.json ...         (jumps, repeats, FP8-vs-BF16 gaps)

CONFIG is a stage config written by `bench_pretrain.py config` (pretrain.log_every=1: a gradient
norm every step). The trainer is the real one (training.pretrain.train: DeepSpeed engine, schedule,
clipping, router bias updates) with two of its functions wrapped:
  - build_engine: after every training forward, under no_grad, on the same weights and micro-batch:
      repeat   the same forward again (every micro-batch);
      bf16     on micro-batch 0 of every step, the same weights with FP8 switched off (FP8Linear as
               nn.Linear, the experts on their bf16 grouped GEMM): the FP8 forward's own error;
    and on a flagged micro-batch (loss up by more than `--jump` nats on the same micro-batch index of
    the step before, or a repeat more than 1e-2 off):
      emulated the FP8 recipe in plain PyTorch (quantize, dequantize, matmul: the CPU path);
      blocks   the largest |activation| after every block, FP8 and BF16 (where they part).
    Router token counters are restored after each extra forward (they feed the bias update).
  - gradients (`--grads`, FP8 runs): on micro-batch 0 of every step, a shadow copy of the model
    (made before DeepSpeed wraps it, loaded with the current weights) gives the gradient of that
    micro-batch in FP8 (the GPU kernels) and in BF16; their cosine similarity, over all parameters
    and per module (the lowest), says whether the FP8 backward points where BF16's does. On a
    flagged micro-batch, also the FP8 recipe's emulation, for this step and for the step before
    (whose update led to the jump; its weights and batch are kept for that).
  - optimizer_step: every step, the gradient norm DeepSpeed measured (before clipping) and each
    module's gradient norm (through `safe_get_full_grad`: ZeRO keeps gradients out of p.grad).
How to read it: a jump that the repeat reproduces and the BF16 forward of the same weights shares
is in the weights (training dynamics), not in a kernel; one the repeat does not reproduce is a
transient (a race, a read of unwritten memory); one that only the FP8 GPU forward shows, not the
emulation, is a kernel that is wrong on that input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPEAT_TOL = 1e-2  # nats: a repeated forward further off than this is flagged (atomics: ~1e-4)


def module_of(name: str) -> str:
    """`layers.3.attn.wq_a.weight` -> `layers.3.attn.wq_a`: a parameter's module (its gradient group)."""
    return name.rsplit(".", 1)[0]


class _Precision:
    """Context: run a converted model's forward in "bf16" (FP8 off) or "emulate" (the CPU recipe on GPU)."""

    def __init__(self, module, mode: str):
        from kernels.fp8_linear import FP8Linear
        from training.expert_parallel import ExpertParallelExperts

        self.linears = [(m, m.emulate) for m in module.modules() if isinstance(m, FP8Linear)]
        self.experts = [(m, m.fp8) for m in module.modules() if isinstance(m, ExpertParallelExperts) and m.fp8]
        self.mode = mode

    def __enter__(self):
        import torch.nn as nn

        for m, _ in self.linears:
            if self.mode == "bf16":
                m.__class__ = nn.Linear  # NOTE: the same Parameters; restored on exit
            else:
                m.emulate = True
        for m, _ in self.experts:
            m.fp8 = None if self.mode == "bf16" else "emulate"

    def __exit__(self, *exc):
        from kernels.fp8_linear import FP8Linear

        for m, emulate in self.linears:
            m.__class__ = FP8Linear
            m.emulate = emulate
        for m, fp8 in self.experts:
            m.fp8 = fp8


def _block_amax(module, ids, labels) -> list[float]:
    """Largest |hidden state| after each block (main layers, then MTP), one forward."""
    import torch

    from training.model.model import Block

    found: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: found.append((o[0] if isinstance(o, tuple) else o)
                                                                     .detach().abs().max().float()))
             for m in module.modules() if isinstance(m, Block)]
    try:
        module(ids, labels)
    finally:
        for h in hooks:
            h.remove()
    return [float(x) for x in found]


def _cosines(a: dict, b: dict) -> dict:
    """Cosine similarity of two gradients (name -> tensor): over all, and the lowest module's."""
    import torch

    dot = na = nb = 0.0
    per = {}
    for k in a:
        x, y = a[k].float().flatten(), b[k].float().flatten()
        d, xx, yy = float(x @ y), float(x @ x), float(y @ y)
        dot, na, nb = dot + d, na + xx, nb + yy
        per[k] = d / max((xx * yy) ** 0.5, 1e-30)
    low = min(per, key=per.get)
    return {"all": dot / max((na * nb) ** 0.5, 1e-30), "lowest_module": module_of(low), "lowest": per[low],
            "norm_ratio": (na / max(nb, 1e-30)) ** 0.5, "nonfinite": int(sum(not torch.isfinite(t).all() for t in a.values()))}


def spike_run(config: Path, out: Path, jump: float = 0.3, top: int = 8, grads: bool = False) -> None:
    import copy

    import torch
    from deepspeed.utils import safe_get_full_grad

    import training.pretrain as tp
    from training.launch import StageConfig

    stage = StageConfig.read(config)
    pcfg = stage.resolved_profile().pretrain
    fp8 = pcfg.precision == "fp8"
    rec: dict = {"config": str(config), "precision": pcfg.precision, "seed": pcfg.seed, "micro": [],
                 "steps": [], "flagged": []}
    state = {"calls": 0, "last": {}, "shadow": None, "prev": None}
    orig_build, orig_step = tp.build_engine, tp.optimizer_step

    def save():
        out.write_text(json.dumps(rec))

    def counters(module):
        return [m.gate.tokens_per_expert for m in module.moe_layers().values()]

    def extra_forward(module, ids, labels, mode: str | None = None):
        saved = [c.clone() for c in counters(module)]
        with torch.no_grad():
            if mode is None:
                loss = module(ids, labels).lm_loss
            else:
                with _Precision(module, mode):
                    loss = module(ids, labels).lm_loss
        for c, s in zip(counters(module), saved):
            c.copy_(s)
        return float(loss)

    class Instrumented:
        """The DeepSpeed engine, its training forwards followed by the extra ones above."""

        def __init__(self, engine):
            self.__dict__["_engine"] = engine

        def __getattr__(self, name):
            return getattr(self._engine, name)

        def __setattr__(self, name, value):
            setattr(self._engine, name, value)

        def __call__(self, ids, labels):
            output = self._engine(ids, labels)
            module = self._engine.module
            if not (torch.is_grad_enabled() and module.training):  # validation: as is
                return output
            acc = pcfg.global_batch_size // pcfg.micro_batch_size  # one rank
            step, micro = divmod(state["calls"], acc)
            state["calls"] += 1
            r = {"step": step + 1, "micro": micro, "loss": float(output.lm_loss),  # what the trainer logs
                 "repeat": extra_forward(module, ids, labels)}
            if fp8 and micro == 0:
                r["bf16"] = extra_forward(module, ids, labels, "bf16")
            weights = g8 = None
            if state["shadow"] is not None and micro == 0:
                weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
                g8 = shadow_grads(weights, ids, labels, None)
                r["grad_cos_bf16"] = _cosines(g8, shadow_grads(weights, ids, labels, "bf16"))
            before = state["last"].get(micro)
            state["last"][micro] = r["loss"]
            if (before is not None and r["loss"] - before > jump) or abs(r["repeat"] - r["loss"]) > REPEAT_TOL:
                r["before"] = before
                if fp8:
                    r["emulated"] = extra_forward(module, ids, labels, "emulate")
                    saved = [c.clone() for c in counters(module)]
                    with torch.no_grad():
                        r["blocks_fp8"] = _block_amax(module, ids, labels)
                        with _Precision(module, "bf16"):
                            r["blocks_bf16"] = _block_amax(module, ids, labels)
                    for c, s in zip(counters(module), saved):
                        c.copy_(s)
                if state["shadow"] is not None:
                    if g8 is None:
                        weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
                        g8 = shadow_grads(weights, ids, labels, None)
                    r["grad_cos_emulated"] = _cosines(g8, shadow_grads(weights, ids, labels, "emulate"))
                    if state["prev"] is not None:  # the step whose update led here
                        pw, pids, plabels = state["prev"]
                        r["prev_grad_cos_emulated"] = _cosines(shadow_grads(pw, pids, plabels, None),
                                                               shadow_grads(pw, pids, plabels, "emulate"))
                rec["flagged"].append(r)
            if state["shadow"] is not None and micro == 0:
                state["prev"] = (weights, ids.clone(), labels.clone())
            rec["micro"].append(r)
            save()
            return output

    def shadow_grads(weights, ids, labels, mode):
        """Gradients of one micro-batch's loss on the shadow model with `weights`: FP8 kernels (mode
        None), "bf16" or "emulate". name -> tensor."""
        shadow = state["shadow"]
        shadow.load_state_dict(weights)
        for p in shadow.parameters():
            p.grad = None
        if mode is None:
            shadow(ids, labels).loss.backward()
        else:
            with _Precision(shadow, mode):
                shadow(ids, labels).loss.backward()
        return {n: p.grad.detach().clone() for n, p in shadow.named_parameters() if p.grad is not None}

    def build_engine(model, *args, **kwargs):
        if grads and fp8:  # NOTE: copied before DeepSpeed registers its gradient hooks on the model
            groups = {id(m.ep_group): m.ep_group for m in model.modules() if hasattr(m, "ep_group")}
            state["shadow"] = copy.deepcopy(model, memo=groups)  # process groups shared, not copied
        engine, optimizer, scheduler = orig_build(model, *args, **kwargs)
        return Instrumented(engine), optimizer, scheduler

    def optimizer_step(engine, module, measure_norm=False):
        norms = {}
        if measure_norm:  # the accumulation boundary of a logged step: gradients are complete
            sq = {}
            for name, p in module.named_parameters():
                g = p.grad if p.grad is not None else safe_get_full_grad(p)
                if g is not None:
                    key = module_of(name)
                    sq[key] = sq.get(key, 0.0) + g.float().square().sum()
            norms = {k: float(v.sqrt()) for k, v in sq.items()}
        norm = orig_step(engine, module, measure_norm=measure_norm)
        if measure_norm:
            rec["steps"].append({"step": len(rec["steps"]) + 1, "grad_norm": norm,
                                 "top": dict(sorted(norms.items(), key=lambda kv: -kv[1])[:top])})
            save()
        return norm

    # NOTE: no checkpoint and no export at the end (a diagnosis run; the small model's checkpoint
    # took longer to write than its 40 steps to train)
    orig_save, orig_finish = tp.save_checkpoint, tp._finish
    tp.build_engine, tp.optimizer_step = build_engine, optimizer_step
    tp.save_checkpoint, tp._finish = (lambda *a, **k: None), (lambda *a, **k: {})
    try:
        tp.train(stage)
    finally:
        tp.build_engine, tp.optimizer_step = orig_build, orig_step
        tp.save_checkpoint, tp._finish = orig_save, orig_finish
        save()


def spike_summary(paths: list[Path], jump: float = 0.3) -> None:
    """Per run: loss jumps, whether the repeat and the BF16 forward of the same weights share them,
    gradient-norm spikes, and the largest differences between a forward and its repeat."""
    for path in paths:
        rec = json.loads(path.read_text())
        micro, steps = rec.get("micro", []), rec.get("steps", [])
        if not micro:
            print(f"{path.name}: no records")
            continue
        rep = max(abs(r["repeat"] - r["loss"]) for r in micro)
        gaps = [r["loss"] - r["bf16"] for r in micro if "bf16" in r]
        print(f"{path.name}: {rec['precision']} seed {rec['seed']}, {len(steps)} steps, {len(micro)} micro-batches; "
              f"largest |repeat - loss| {rep:.2e}"
              + (f"; FP8 - BF16 forward of the same weights: median {sorted(gaps)[len(gaps) // 2]:+.4f}, "
                 f"range {min(gaps):+.4f} .. {max(gaps):+.4f}" if gaps else ""))
        g = [s["grad_norm"] for s in steps]
        if g:
            med = sorted(g)[len(g) // 2]
            print("  gradient norm by step: " + " ".join(f"{x:.1f}" for x in g)
                  + f"  (median {med:.2f}; over 5x median at steps "
                  + ", ".join(str(s["step"]) for s in steps if s["grad_norm"] > 5 * med) + ")")
        for r in rec.get("flagged", []):
            extra = ""
            if "emulated" in r:
                extra = f", emulated {r['emulated']:.4f}"
            if "bf16" in r:
                extra += f", bf16 {r['bf16']:.4f}"
            print(f"  flagged step {r['step']} micro {r['micro']}: {r.get('before') or float('nan'):.4f} -> "
                  f"{r['loss']:.4f} (repeat {r['repeat']:.4f}{extra})")
            for key in ("grad_cos_emulated", "prev_grad_cos_emulated"):
                if key in r:
                    c = r[key]
                    print(f"    {key}: all {c['all']:.5f}, lowest {c['lowest']:.4f} ({c['lowest_module']}), "
                          f"norm ratio {c['norm_ratio']:.4f}, non-finite {c['nonfinite']}")
        cos = [(r["step"], r["grad_cos_bf16"]) for r in micro if "grad_cos_bf16" in r]
        if cos:
            worst = min(cos, key=lambda sc: sc[1]["all"])
            low = min(cos, key=lambda sc: sc[1]["lowest"])
            print(f"  FP8 vs BF16 gradient of the same weights and micro-batch, {len(cos)} steps: cosine over all "
                  f"{min(c['all'] for _, c in cos):.4f} .. {max(c['all'] for _, c in cos):.4f} (lowest at step "
                  f"{worst[0]}); lowest module {low[1]['lowest']:.4f} ({low[1]['lowest_module']}, step {low[0]}); "
                  f"norm ratio {min(c['norm_ratio'] for _, c in cos):.3f} .. {max(c['norm_ratio'] for _, c in cos):.3f}; "
                  f"non-finite {sum(c['nonfinite'] for _, c in cos)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("config", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--jump", type=float, default=0.3, help="nats over the same micro-batch of the step before")
    r.add_argument("--grads", action="store_true", help="FP8 vs BF16 gradients every step (a shadow model)")
    s = sub.add_parser("summary")
    s.add_argument("records", type=Path, nargs="+")
    a = ap.parse_args()
    if a.cmd == "run":
        spike_run(a.config, a.out, a.jump, grads=a.grads)
    else:
        spike_summary(a.records)


if __name__ == "__main__":
    main()
