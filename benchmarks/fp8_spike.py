"""Diagnosis of the FP8 loss spike (BENCHMARKS.md 2026-11-30: one FP8 run in four jumped to 11.7 at step 15).

    python benchmarks/fp8_spike.py run CONFIG.json OUT.json      (GPU: the real trainer, per-module norms)
    python benchmarks/fp8_spike.py summary OUT.json ...           (the largest jump and who grew most)

CONFIG is a stage config written by `bench_pretrain.py config` (set pretrain.log_every=1 for every step);
benchmarks/run_pretrain_device.sh (phase H) runs three FP8 seeds through it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def module_of(name: str) -> str:
    """`layers.3.attn.wq_a.weight` -> `layers.3.attn.wq_a`: a parameter's module (its gradient group)."""
    return name.rsplit(".", 1)[0]


def spike_run(config: Path, out: Path, top: int = 8) -> None:
    """Run the real trainer (training.pretrain.train, DeepSpeed engine) on CONFIG with its gradient-norm
    function wrapped: at every logging step (set pretrain.log_every=1) also the gradient norm and the
    largest |gradient| of every module, written to OUT as the run goes. NOTE: DeepSpeed's ZeRO
    optimizer has already moved the gradients out of p.grad by then (2026-11-30 run: no parameter had
    one); `deepspeed.utils.safe_get_full_grad` reads them from its buffers. `with_grad` counts the
    parameters that had a gradient either way."""
    import torch
    from deepspeed.utils import safe_get_full_grad

    import training.pretrain as tp
    from training.launch import StageConfig

    original = tp.grad_norm
    records: list[dict] = []
    errors: dict[str, str] = {}

    def per_module(engine, module) -> float:
        sq, amax, with_grad = {}, {}, 0
        for name, p in module.named_parameters():
            try:
                g = p.grad if p.grad is not None else safe_get_full_grad(p)
            except Exception as e:  # a parameter DeepSpeed keeps no mapping for: record, go on
                errors.setdefault(type(e).__name__, name)
                g = None
            if g is None:
                continue
            with_grad += 1
            key = module_of(name)
            g = g.float()
            sq[key] = sq.get(key, 0.0) + g.square().sum()
            amax[key] = torch.maximum(amax.get(key, torch.zeros((), device=g.device)), g.abs().max())
        total = original(engine, module)
        norms = {k: float(v.sqrt()) for k, v in sq.items()}
        records.append({"call": len(records) + 1, "grad_norm": total, "with_grad": with_grad, "errors": errors,
                        "top": dict(sorted(norms.items(), key=lambda kv: -kv[1])[:top]),
                        "norms": norms, "amax": {k: float(v) for k, v in amax.items()}})
        out.write_text(json.dumps(records))
        return total

    tp.grad_norm = per_module
    try:
        tp.train(StageConfig.read(config))
    finally:
        tp.grad_norm = original
        out.write_text(json.dumps(records))


def spike_summary(paths: list[Path]) -> None:
    """Per run: the loss and gradient norm of every step (history.json beside the record) and, at the
    largest jump of the gradient norm, the modules whose norm grew most against the step before."""
    for path in paths:
        recs = json.loads(path.read_text())
        if not recs:
            print(f"{path.name}: no records")
            continue
        g = [r["grad_norm"] for r in recs]
        j = max(range(1, len(g)), key=lambda i: g[i] / max(g[i - 1], 1e-12)) if len(g) > 1 else 0
        before, at = recs[j - 1]["norms"] if j else {}, recs[j]["norms"]
        growth = sorted(((at[k] / max(before.get(k, 0.0), 1e-12), k) for k in at), reverse=True)[:6]
        print(f"{path.name}: {len(recs)} steps, {recs[-1]['with_grad']} params with grads; grad norm by step "
              + " ".join(f"{x:.2f}" for x in g))
        print(f"  largest jump at step {j + 1}: {g[j - 1] if j else 0:.3f} -> {g[j]:.3f}; modules grown most: "
              + ", ".join(f"{k} x{r:.1f} ({at[k]:.3f})" for r, k in growth))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("config", type=Path)
    r.add_argument("out", type=Path)
    s = sub.add_parser("summary")
    s.add_argument("records", type=Path, nargs="+")
    a = ap.parse_args()
    if a.cmd == "run":
        spike_run(a.config, a.out)
    else:
        spike_summary(a.records)


if __name__ == "__main__":
    main()
