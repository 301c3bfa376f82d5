"""Pretraining: the DeepSeek-V3 model on the packed token shards, on a DeepSpeed engine.

    python -m training.pretrain --config STAGE_CONFIG.json      (one process)
    deepspeed --num_gpus 8 --module training.pretrain --config STAGE_CONFIG.json

One optimizer step = `accumulation` micro-steps per rank (DeepSpeed scales the loss and steps the
optimizer on the last one), then the aux-loss-free router bias update from the step's token
counts, summed over ranks. The loss is the main next-token loss + lambda x the MTP losses + the
small sequence-wise balance loss (training/model/model.py).

Resumable: on start it loads the newest complete checkpoint under <output_dir>/checkpoints
(weights, optimizer, schedule, RNG) and continues at its step; the data position follows from the
step (training/data.py). At the end it writes a Hugging Face export (<output_dir>/export:
config.json, model.safetensors, tokenizer files), a loss curve, registers the model in MLflow and
reports the final figures as Dagster materialization metadata (through Pipes when Dagster launched it).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch.profiler import record_function

from training import distributed
from training.data import PackedBatches, read_index, unigram_entropy, validation_batches
from training.engine import (apply_speed_options, build_engine, complete_tags, load_latest, optimizer_step,
                             peak_flops, resolved_precision, save_checkpoint)
from training.entrypoint import run_stage, stage_main
from training.expert_parallel import apply_expert_parallel
from training.launch import StageConfig
from training.reporting import Reporter
from training.settings import Profile


def check_inputs(profile: Profile, shards_dir: Path, tokenizer_dir: Path, world_size: int,
                 weights_wanted: bool = False) -> dict:
    """Fail before any work on inputs that cannot train; the message names the field or path.
    `weights_wanted`: the caller's output is the trained model (the assets), which
    `pretrain.checkpoint_every: 0` would not write."""
    from training.data import ShardsError

    if weights_wanted and profile.pretrain.checkpoint_every == 0:
        raise ValueError("pretrain.checkpoint_every is 0, which writes no checkpoint and no export, but this "
                         "asset's output is the trained model: set it >= 1 (0 is for runs read for their losses)")

    index = read_index(shards_dir)
    model, train = profile.model, profile.pretrain
    tok_file = Path(tokenizer_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise ShardsError(f"no tokenizer at {tok_file} (materialize `tokenizer` first)")
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tok_file)).get_vocab_size()
    if vocab > model.vocab_size:
        raise ValueError(f"model.vocab_size ({model.vocab_size}) is smaller than the tokenizer's vocabulary "
                         f"({vocab}, {tok_file}); set model.vocab_size >= {vocab} or tokenizer.vocab_size <= "
                         f"{model.vocab_size}")
    if index["vocab_size"] != vocab:
        raise ShardsError(f"{shards_dir}/index.json was tokenized with a {index['vocab_size']}-token vocabulary, "
                          f"but {tok_file} has {vocab}: rematerialize `pretraining_shards`")
    if index["sequence_length"] > model.max_position_embeddings:
        raise ValueError(f"shards.sequence_length ({index['sequence_length']}) exceeds model.max_position_embeddings "
                         f"({model.max_position_embeddings})")
    per_step = train.micro_batch_size * world_size
    if train.global_batch_size % per_step:
        raise ValueError(f"pretrain.global_batch_size ({train.global_batch_size}) must be a multiple of "
                         f"pretrain.micro_batch_size x ranks ({train.micro_batch_size} x {world_size} = {per_step})")
    if train.eval_batches % world_size:
        raise ValueError(f"pretrain.eval_batches ({train.eval_batches}) must be a multiple of the number of ranks "
                         f"({world_size}): each rank evaluates the same number of micro-batches")
    if world_size % train.ep_size or (model.n_routed_experts and model.n_routed_experts % train.ep_size):
        raise ValueError(f"pretrain.ep_size ({train.ep_size}) must divide the number of ranks ({world_size}) "
                         f"and model.n_routed_experts ({model.n_routed_experts})")
    return index


def loss_curve_png(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def evaluate(engine, shards_dir: Path, cfg, dist) -> float:
    engine.eval()
    losses = [engine(b[:, :-1].to(dist.device), b[:, 1:].to(dist.device)).lm_loss.item()
              for b in validation_batches(shards_dir, cfg.micro_batch_size, cfg.eval_batches, dist.rank,
                                          dist.world_size)]
    engine.train()
    return distributed.all_mean(sum(losses) / len(losses), dist.device)


def layer_label(name: str) -> str:
    """`layers.3.mlp` -> `3`; an MTP block's MoE `mtp.0.block.mlp` -> `mtp0` (never mistaken for layer 0)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "layers" else f"{parts[0]}{parts[1]}"


def router_metrics(model) -> dict[str, float]:
    return {f"router_bias_norm.{layer_label(name)}": moe.gate.e_score_correction_bias.norm().item()
            for name, moe in model.moe_layers().items()}


def convert_model_to_fp8(model, emulate: bool) -> list[str]:
    """The FP8 recipe on a model after `apply_expert_parallel` (also used by benchmarks/bench_pretrain.py):
    the linears through the converter; the expert blocks stay inside their expert-parallel wrapper
    (which owns the all-to-all) and switch to the FP8 grouped GEMM there."""
    from kernels.convert import FP8Config, convert_to_fp8

    from training.expert_parallel import use_fp8_experts

    names = convert_to_fp8(model, FP8Config(exclude=[*FP8Config().exclude, "*deepspeed_experts*"]))
    use_fp8_experts(model, emulate=emulate)
    return names


def train(stage: StageConfig) -> dict:
    profile = stage.resolved_profile()
    cfg, out = profile.pretrain, Path(stage.output_dir)
    shards_dir, tokenizer_dir = Path(stage.inputs["pretraining_shards"]), Path(stage.inputs["tokenizer"])
    return run_stage(stage, cfg.threads,
                     lambda dist, report: _train(stage, profile, cfg, out, shards_dir, tokenizer_dir, dist, report))


def _train(stage, profile, cfg, out, shards_dir, tokenizer_dir, dist, report) -> dict:
    import deepspeed  # noqa: F401  (imported after the process group exists)

    from training.model import Transformer

    index = check_inputs(profile, shards_dir, tokenizer_dir, dist.world_size)
    if cfg.activation_checkpointing:
        raise ValueError("pretrain.activation_checkpointing: not supported yet (recomputing a MoE layer's forward "
                         "would count its routed tokens twice for the bias update); set it to false")
    precision = resolved_precision(cfg, dist.device)
    seq_len = index["sequence_length"]
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = Transformer(profile.model)
    apply_expert_parallel(model, cfg.ep_size)
    model.to(dist.device)
    if precision == "fp8":
        convert_model_to_fp8(model, emulate=dist.device.type != "cuda")
    apply_speed_options(model, cfg)
    engine, _, scheduler = build_engine(model, cfg, dist, precision)
    ckpt_dir = stage.checkpoint_dir("pretrain")
    client = load_latest(engine, ckpt_dir, dist)
    start = client["step"] if client else 0
    history: list[dict] = client.get("history", []) if client else []
    tokens_seen = client.get("tokens", 0) if client else 0
    if client:
        report.info(f"resumed from checkpoint step {start} ({complete_tags(ckpt_dir)[-1].name})")
    else:
        torch.manual_seed(cfg.seed + 1000 * dist.rank)  # per-rank streams from here on (dropout-free, but MTP/routing ties)
    data = PackedBatches(shards_dir, "train", cfg.global_batch_size, cfg.micro_batch_size, dist.rank,
                         dist.world_size, cfg.seed)
    from training.model import flops_per_token

    fpt = flops_per_token(profile.model, seq_len, causal=True)
    peak = peak_flops(dist.device, "bf16")
    tokens_per_step = cfg.global_batch_size * seq_len
    report.params({**{k: v for k, v in profile.flat().items() if k.startswith(("pretrain.", "model."))},
                   "precision": precision, "world_size": dist.world_size, "sequence_length": seq_len,
                   "accumulation": data.accumulation, "flops_per_token": fpt, "resumed_from_step": start})
    report.info(f"training steps {start}..{cfg.steps} on {dist.world_size} rank(s), {dist.device}, {precision}, "
                f"ep_size {cfg.ep_size}, {tokens_per_step} tokens/step, {data.n} train windows")

    module = engine.module
    if cfg.cuda_graphs:  # after the engine (its flat weight buffers) and the checkpoint: replays read them in place
        from kernels.autoselect import set_timing
        from training.graphs import capture_blocks

        # the captured GEMMs' backends are chosen in the warm-up before capture: by device time, what a
        # replay pays (an eager step pays the host launches too; kernels/autoselect.py)
        set_timing("gpu")
        first = data.batch(start, 0).to(dist.device)
        module.train()
        report.info(f"CUDA graphs: {capture_blocks(module, first[:, :-1], first[:, 1:])} blocks captured")
    step_time, window_tokens, window_start = 0.0, 0, time.time()
    profiler = None
    for step in range(start, cfg.steps):
        t0 = time.time()
        done = step + 1
        logging_step = done % cfg.log_every == 0 or done == cfg.steps
        if cfg.profile_step and step == cfg.profile_step:
            profiler = _start_profiler()
        # NOTE: losses are summed on the device (float64, as the Python floats they replace) and read
        # once per log: a .item() per micro-step would stall the GPU queue every micro-step
        lm = torch.zeros((), dtype=torch.float64, device=dist.device)
        mtp = torch.zeros((), dtype=torch.float64, device=dist.device)
        for micro in range(data.accumulation):
            with record_function("data"):
                batch = data.batch(step, micro).to(dist.device, non_blocking=True)
            with record_function("forward"):
                output = engine(batch[:, :-1], batch[:, 1:])
            with record_function("backward"):
                engine.backward(output.loss)
            with record_function("engine_step"):  # the optimizer step on the last micro-step
                norm = optimizer_step(engine, module, measure_norm=micro == data.accumulation - 1 and logging_step)
            if norm is not None:
                gnorm = norm
            lm += output.lm_loss.detach().double() / data.accumulation
            if output.mtp_losses:
                mtp += torch.stack([x.detach().double() for x in output.mtp_losses]).mean() / data.accumulation
        with record_function("router_bias_update"):
            load = module.update_router_biases()  # aux-loss-free balancing, after the optimizer step
        tokens_seen += tokens_per_step
        step_time += time.time() - t0
        window_tokens += tokens_per_step
        if profiler is not None and step == cfg.profile_step + 1:
            _stop_profiler(profiler, out, dist.rank, report)
            profiler, window_tokens, window_start = None, 0, time.time()  # traced steps are not throughput
        if logging_step:
            loss = distributed.all_mean(lm.item(), dist.device)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss} at step {done} (pretrain.learning_rate "
                                         f"{cfg.learning_rate}, precision {precision}): the run diverged")
            elapsed = time.time() - window_start
            tps = window_tokens / elapsed if window_tokens else 0.0
            metrics = {"loss": loss, "mtp_loss": distributed.all_mean(mtp.item(), dist.device),
                       "lr": scheduler.get_last_lr()[0], "grad_norm": gnorm,
                       "tokens_per_second": tps, "tokens": tokens_seen, "epoch": data.epoch_of(done)}
            if peak:
                metrics["mfu"] = fpt * tps / (peak * dist.world_size)
            for name, ratio in load.items():
                metrics[f"expert_load_max_over_mean.{layer_label(name)}"] = ratio
            metrics.update(router_metrics(module))
            report.metrics(metrics, step=done)
            history.append({"step": done, "loss": loss, "tokens_per_second": tps})
            report.info(f"step {done}/{cfg.steps} loss {loss:.4f} mtp {metrics['mtp_loss']:.4f} "
                        f"lr {metrics['lr']:.2e} gnorm {metrics['grad_norm']:.3f} {tps:,.0f} tok/s")
            window_tokens, window_start = 0, time.time()
        if done % cfg.eval_every == 0 or done == cfg.steps:
            val = evaluate(engine, shards_dir, cfg, dist)
            report.metrics({"val_loss": val}, step=done)
            history.append({"step": done, "val_loss": val})
            report.info(f"step {done} validation loss {val:.4f}")
            window_start = time.time()  # validation time is not training throughput
        if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            save_checkpoint(engine, ckpt_dir, done, dist, {"history": history, "tokens": tokens_seen},
                            cfg.keep_checkpoints)
            window_start = time.time()

    return _finish(stage, profile, out, ckpt_dir, tokenizer_dir, shards_dir, module, history, tokens_seen, fpt,
                   peak, dist, report, start)


def _start_profiler():
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    prof = profile(activities=activities, record_shapes=False)
    prof.__enter__()
    return prof


def _stop_profiler(prof, out: Path, rank: int, report: Reporter) -> None:
    """The two traced steps' operators by device time (CPU time on a CPU) -> <out>/profile_rank<r>.txt."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    prof.__exit__(None, None, None)
    key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    events = prof.key_averages()
    path = out / f"profile_rank{rank}.txt"
    path.write_text(events.table(sort_by=key, row_limit=60, max_name_column_width=90) + "\n\nby CPU time:\n"
                    + events.table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=90))
    rows = [{"name": e.key, "calls": e.count, "self_us": getattr(e, key)} for e in events]
    path.with_suffix(".json").write_text(json.dumps(sorted(rows, key=lambda r: -r["self_us"])))
    report.info(f"profile of 2 steps written to {path}")


def _finish(stage, profile, out, ckpt_dir, tokenizer_dir, shards_dir, module, history, tokens_seen, fpt, peak,
            dist, report, start) -> dict:
    from training.export import export_model

    # collective: gathers the expert blocks from every EP rank; rank 0 writes (model + tokenizer files);
    # none where no weights are kept (pretrain.checkpoint_every 0)
    keep = profile.pretrain.checkpoint_every > 0
    export = export_model(module, profile.model, tokenizer_dir, out / "export") if keep else None
    if not dist.is_main:
        distributed.barrier()  # rank 0 writes the summary and registers the model
        return {}
    vals = [h["val_loss"] for h in history if "val_loss" in h]
    losses = [h for h in history if "loss" in h]
    speeds = [h["tokens_per_second"] for h in history[-10:] if "tokens_per_second" in h]
    tps = sum(speeds) / len(speeds) if speeds else 0.0
    curve = loss_curve_png(history, out / "loss_curve.png")
    summary = {
        "final_loss": losses[-1]["loss"] if losses else None,
        "validation_loss": vals[-1] if vals else None,
        "unigram_entropy": unigram_entropy(shards_dir),
        "tokens": tokens_seen,
        "tokens_per_second": tps,
        "mfu": fpt * tps / (peak * dist.world_size) if peak else None,
        "steps": profile.pretrain.steps,
        "resumed_from_step": start,
        "checkpoint": str(complete_tags(ckpt_dir)[-1]) if keep else None,
        "export": str(export) if export else None,
        "loss_curve": str(curve),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "history.json").write_text(json.dumps(history))
    if report.mlflow_run_id:
        _log_results(report, stage, export, curve, summary)
    report.materialization({k: v for k, v in summary.items() if v is not None})
    report.info(f"done: validation loss {summary['validation_loss']:.4f} (unigram entropy "
                f"{summary['unigram_entropy']:.4f}), {tokens_seen:,} tokens, {tps:,.0f} tok/s")
    distributed.barrier()
    return summary


def _log_results(report: Reporter, stage: StageConfig, export: Path | None, curve: Path, summary: dict) -> None:
    """The loss curve and final figures to the MLflow run; the export, where there is one (not with
    pretrain.checkpoint_every 0), logged and registered (summary["registered_model"])."""
    mlflow = report.mlflow
    from training.mlflow_model import log_and_register

    mlflow.log_artifact(str(curve))
    mlflow.log_metrics({"final_val_loss": summary["validation_loss"], "unigram_entropy": summary["unigram_entropy"]})
    if export is not None:
        name = stage.mlflow.get("registered_model", f"seekflow-{stage.stage.replace('_', '-')}")
        summary["registered_model"] = f"{name}/{log_and_register(export, name, stage.mlflow.get('aliases', []))}"


main = stage_main(train, "Seekflow pretraining (DeepSpeed)")


if __name__ == "__main__":
    raise SystemExit(main())
