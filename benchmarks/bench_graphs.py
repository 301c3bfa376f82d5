"""How much of the `small` FP8 step is host time: the model's transformer blocks, forward + backward,
eager against CUDA graphs, BF16 against FP8, at a few widths (issue 7).

    python benchmarks/bench_graphs.py OUT.json [--scales 1 4] [--layers 4] [--micro-batch 8] [--iters 20]

Why. The FP8 trainer runs at 0.62x BF16 on `small` (BENCHMARKS.md), and one small FP8 linear costs
about 1 ms of host time against 0.22 ms in bf16: the GPU waits for Python. A CUDA graph replays a
block's kernels without Python (torch.cuda.make_graphed_callables, one forward and one backward graph
per block, the way Megatron-LM and Transformer Engine graph their layers), so graphed FP8 against
graphed BF16 is what the FP8 kernels give once the host is out of the way:
  - graphed FP8 faster than graphed BF16: CUDA graphs in the trainer are the way to issue 7's goal;
  - not faster: the quantization passes are, and graphs alone will not do it.
NOTE: timing only. The FP8 weights are quantized before capture and never again (the weight cache
decides on the host, and that decision is frozen into the graph): right while the weights do not
change, as here (no optimizer). A trainer would quantize into static buffers after each optimizer step.
Without CUDA the script runs the eager half on the CPU (FP8 emulated), which checks the script only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_pretrain import WIDTH_BASE, build_model  # noqa: E402


def build_blocks(profile, precision: str, device: torch.device):
    """The model's transformer blocks, set up as the trainer sets up the model (bench_pretrain.build_model),
    and the rotary tables of one sequence."""
    model = build_model(profile, precision, device)
    positions, _ = model._positions_and_mask(1, profile.shards.sequence_length, None, None)
    cos, sin = model.rotary(positions)  # (1, T, rope/2)
    return model, list(model.layers), cos, sin


def blocks_step(blocks, x, cos, sin) -> None:
    """Forward through every block, a scalar loss, backward (parameter gradients accumulate)."""
    h, balance = x, None
    for block in blocks:
        h, b = block(h, cos, sin)
        balance = b if balance is None else balance + b
    (h.float().square().mean() + balance).backward()


def count_host_syncs(step) -> dict:
    """Host syncs in one eager step (torch.cuda.set_sync_debug_mode warns at each): every one stalls
    Python until the GPU catches up, so host and GPU time add up instead of overlapping, and each
    one makes a CUDA-graph capture fail."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    return {"count": len(where), "sites": sorted(set(where))[:8]}


def time_blocks(profile, precision: str, micro_batch: int, iters: int, graphed: bool, device) -> dict:
    """ms per micro-batch of blocks_step, eager or graphed; host ms = Python time to queue one step."""
    model, blocks, cos, sin = build_blocks(profile, precision, device)
    D, T = profile.model.hidden_size, profile.shards.sequence_length
    x = torch.randn(micro_batch, T, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    for _ in range(3):  # eager warm-up: Triton autotuning, `auto` backend choices, allocator
        blocks_step(blocks, x, cos, sin)
    res = {}
    if device.type == "cuda" and not graphed:
        res["host_syncs"] = count_host_syncs(lambda: blocks_step(blocks, x, cos, sin))
    if graphed:
        samples = tuple((torch.randn_like(x).requires_grad_(), cos, sin) for _ in blocks)
        blocks = list(torch.cuda.make_graphed_callables(tuple(blocks), samples))
        for _ in range(3):
            blocks_step(blocks, x, cos, sin)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    host = []
    for _ in range(iters):
        h0 = time.perf_counter()
        blocks_step(blocks, x, cos, sin)
        host.append(time.perf_counter() - h0)
    if cuda:
        end.record()
        torch.cuda.synchronize()
        res["ms"] = start.elapsed_time(end) / iters
    else:
        res["ms"] = (time.perf_counter() - t0) / iters * 1e3
    res["host_ms"] = sorted(host)[len(host) // 2] * 1e3  # median time to queue one step
    del model, blocks
    if cuda:
        torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seq", type=int, default=2048)
    a = ap.parse_args()

    from training import distributed
    from training.settings import load_profile

    device = distributed.init().device  # a world of one: the expert-parallel wrapper asks for its groups
    modes = [False, True] if device.type == "cuda" else [False]
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "rows": []}
    print("| scale | precision | eager ms | eager host ms | graphed ms | eager / graphed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for s in a.scales:
        overrides = {f"model.{k}": v * s for k, v in WIDTH_BASE.items()}
        overrides.update({"model.num_hidden_layers": a.layers, "pretrain.compile": False,
                          "shards.sequence_length": a.seq})
        profile = load_profile("small", overrides)
        for precision in ("bf16", "fp8"):
            row = {"scale": s, "precision": precision, "layers": a.layers, "micro_batch": a.micro_batch}
            for graphed in modes:
                key = "graphed" if graphed else "eager"
                try:
                    row[key] = time_blocks(profile, precision, a.micro_batch, a.iters, graphed, device)
                except Exception as e:  # a capture that fails (a host sync in the path) is a finding too
                    row[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
            res["rows"].append(row)
            a.out.write_text(json.dumps(res, indent=1))
            e, g = row["eager"], row.get("graphed", {})
            ratio = f"{e['ms'] / g['ms']:.2f}" if "ms" in e and "ms" in g else "-"
            print(f"| {s} | {precision} | {e.get('ms', e.get('error'))} | {e.get('host_ms', '-')} | "
                  f"{g.get('ms', g.get('error', '-'))} | {ratio} |", flush=True)
            if e.get("host_syncs"):
                print(f"  host syncs per eager step: {e['host_syncs']}", flush=True)
    for s in a.scales:  # FP8 over BF16, eager and graphed
        rows = {r["precision"]: r for r in res["rows"] if r["scale"] == s}
        for key in ("eager", "graphed"):
            b, f = rows["bf16"].get(key, {}), rows["fp8"].get(key, {})
            if "ms" in b and "ms" in f:
                res.setdefault("fp8_speed_over_bf16", {})[f"{s}x {key}"] = b["ms"] / f["ms"]
                print(f"scale {s} {key}: FP8 speed / BF16 = {b['ms'] / f['ms']:.2f}")
    a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
