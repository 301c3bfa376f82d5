"""GRPO on DeepSpeed: reinforcement learning with rule rewards, as in DeepSeek-R1-Zero.

    python -m training.grpo --config STAGE_CONFIG.json

Inputs (StageConfig.inputs): `model` (a Hugging Face export: the policy's start and the frozen
reference), `tasks` (the reasoning_tasks table). The stage's settings are the profile section named
by StageConfig.stage (e.g. `r1_zero`), a GRPOConfig.

Each step:
  1. P train questions, drawn by (seed, step): resumable from the step counter alone;
  2. rollout: G responses each from the current policy (the stage's temperature; R1: 1.0), batched on
     the latent cache;
  3. rewards (training/rewards): the configured components, weighted and summed; the sandbox runs code;
  4. group-normalized advantages; pi_old = the policy before this batch's updates (recomputed by a
     forward pass when there are several updates; ratio = 1 exactly at the first), pi_ref = the
     frozen start; log-probs are taken at the rollout temperature, the distribution sampled from;
  5. `updates_per_batch` optimizer steps over the batch in micro-batches (training/grpo_loss.py),
     then the router bias update.
Logged per step: each reward component, accuracy, response length, KL, clip fraction, entropy,
rollout tokens/s and the rollout share of step time. Held-out pass@1 (k samples, temperature 0.6,
top-p 0.95) is measured on the start model and on the final one, in the same process and code.
Checkpoints and resume as in pretraining (training/engine.py).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from training.engine import build_engine, complete_tags, load_latest, resolved_precision, save_checkpoint
from training.entrypoint import run_stage, stage_main
from training.expert_parallel import apply_expert_parallel
from training.grpo_loss import group_advantages, grpo_loss, token_logprobs
from training.launch import StageConfig
from training.settings import GRPOConfig


def general_prompts(folder: Path) -> list[dict]:
    """Non-reasoning prompts with a reference answer (the `general` rows of an SFT set, e.g.
    rejection_sampled_sft), as tasks of kind `general`: scored by the rule proxy in
    training/rewards/general.py for the final, all-scenario RL stage."""
    table = Path(folder) / "sft.parquet" if Path(folder).is_dir() else Path(folder)
    rows = [r for r in pq.read_table(table).to_pylist() if r["kind"] == "general"]
    return [{"id": r["id"], "family": f"general/{r['family']}", "kind": "general", "difficulty": 0, "prompt": r["prompt"],
             "answer": "", "reference": r["reference"], "numbers": [], "tests": "", "entry_point": ""} for r in rows]


def train_tasks(tasks_path: Path, cfg: GRPOConfig) -> list[dict]:
    rows = [r for r in pq.read_table(tasks_path).to_pylist() if r["split"] == "train"]
    if cfg.families:
        rows = [r for r in rows if r["family"] in cfg.families]
    if cfg.difficulties:
        rows = [r for r in rows if r["difficulty"] in cfg.difficulties]
    if not rows:
        raise ValueError(f"{tasks_path}: no train task in families {cfg.families or 'all'} and difficulties "
                         f"{cfg.difficulties or 'all'}")
    return sorted(rows, key=lambda r: r["id"])


def heldout_report(model_dir: Path, tasks_path: Path, profile, out: Path, name: str) -> dict:
    """pass@1 over k samples with its 95% interval, cons@k, format, length of the model saved in
    `model_dir`, by training/evaluate.py with the profile's `evaluation` settings (cached: the
    report card reuses it)."""
    from dataclasses import asdict

    from training.eval_cache import evaluate_cached
    from training.evaluate import EvalConfig

    summary, results = evaluate_cached(model_dir, tasks_path, EvalConfig(**asdict(profile.evaluation)))
    report = {**summary, "results": str(results)}
    (out / f"heldout_{name}.json").write_text(json.dumps(report, indent=2))
    return report


def heldout_change(before: dict, after: dict) -> dict:
    """The summary's held-out fields from two `heldout_report`s: each model's pass@1 and interval, and the
    change. NOTE: both models answer the same held-out tasks, so the change is read per task, paired, as
    the report card reads it (training/report.py): two unpaired intervals that overlap can hide a clear gain."""
    from training.report import paired_difference, per_task_means

    b, a = before["overall"], after["overall"]
    pass_at_1 = [per_task_means(pq.read_table(r["results"], columns=["task_id", "accuracy"]).to_pylist(), "accuracy")
                 for r in (before, after)]
    change = paired_difference(*pass_at_1)
    return {"heldout_pass@1_start": b["pass@1"], "heldout_pass@1_start_ci": b["pass@1_ci"],
            "heldout_pass@1": a["pass@1"], "heldout_pass@1_ci": a["pass@1_ci"],
            "heldout_pass@1_difference": change.difference, "heldout_pass@1_difference_ci": [change.low, change.high],
            "heldout_format_start": b["format"], "heldout_format": a["format"], "heldout_tasks": a["tasks"]}


def _draw(rng: random.Random, pool: list[dict], n: int) -> list[dict]:
    """n distinct items when the pool has them, else with repeats."""
    return rng.sample(pool, n) if len(pool) >= n else rng.choices(pool, k=n)


def _policy_logprobs(module, ids: torch.Tensor, micro: int, temperature: float) -> torch.Tensor:
    """(N, L-1) log-probs of ids[:, 1:] under `module` at `temperature`, no grad, in micro-batches."""
    out = []
    with torch.no_grad():
        for i in range(0, ids.shape[0], micro):
            chunk = ids[i:i + micro]
            out.append(token_logprobs(module(chunk[:, :-1]), chunk[:, 1:], temperature)[0])
    return torch.cat(out)


def train(stage: StageConfig) -> dict:
    profile = stage.resolved_profile()
    cfg: GRPOConfig = getattr(profile, stage.stage)
    out = Path(stage.output_dir)
    return run_stage(stage, cfg.threads, lambda dist, report: _train(stage, profile, cfg, out, dist, report))


def _train(stage, profile, cfg: GRPOConfig, out: Path, dist, report) -> dict:
    from tokenizers import Tokenizer

    from training.model import from_pretrained
    from training.rewards import score_batch
    from training.rollout import sample_groups
    from training.sandbox import SandboxPool

    if dist.world_size > 1:
        raise ValueError("GRPO runs on one process for now: rollouts on several ranks would need lockstep "
                         f"generation (launch.nproc_per_node is {dist.world_size}; set it to 1)")
    model_dir, tasks_path = Path(stage.inputs["model"]), Path(stage.inputs["tasks"])
    if tasks_path.is_dir():  # the reasoning_tasks asset's folder
        tasks_path = tasks_path / "tasks.parquet"
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tasks = train_tasks(tasks_path, cfg)
    general = general_prompts(Path(stage.inputs["general"])) if stage.inputs.get("general") else []
    precision = resolved_precision(cfg.as_engine_config(), dist.device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    reference = from_pretrained(model_dir, device=dist.device, dtype=dtype, mtp=False).eval().requires_grad_(False)
    policy = from_pretrained(model_dir, device="cpu", mtp=False)
    apply_expert_parallel(policy, 1)
    policy.to(dist.device)
    engine, _, scheduler = build_engine(policy, cfg.as_engine_config(), dist, precision)
    module = engine.module
    ckpt_dir = stage.checkpoint_dir(stage.stage)
    client = load_latest(engine, ckpt_dir, dist)
    start = client["step"] // cfg.updates_per_batch if client else 0
    history = client.get("history", []) if client else []
    report.params({**{f"{stage.stage}.{k}": v for k, v in vars(cfg).items()}, "precision": precision,
                   "train_tasks": len(tasks), "resumed_from_step": start, "base_model": str(model_dir)})
    if client:
        report.info(f"resumed from checkpoint step {start} ({complete_tags(ckpt_dir)[-1].name})")
    before = heldout_report(model_dir, tasks_path, profile, out, "start")
    report.info(f"held-out pass@1 at the start: {before['overall']['pass@1']:.3f} {before['overall']['pass@1_ci']}")
    weights = {c: cfg.reward_weights.get(c, 1.0) for c in cfg.rewards}
    P, G, micro = cfg.prompts_per_step, cfg.group_size, cfg.micro_batch_size
    pool = SandboxPool(cfg.sandbox_workers)
    try:
        for step in range(start, cfg.steps):
            t0 = time.time()
            rng = random.Random(cfg.seed * 1_000_003 + step)
            n_general = round(P * cfg.general_fraction) if general else 0
            batch_tasks = _draw(rng, tasks, P - n_general) + _draw(rng, general, n_general)
            gen = torch.Generator(device=dist.device).manual_seed(cfg.seed * 7919 + step)
            module.eval()
            roll = sample_groups(module, tokenizer, [t["prompt"] for t in batch_tasks], G, cfg.max_new_tokens,
                                 cfg.temperature, cfg.top_p, gen)
            module.train()
            group_tasks = [t for t in batch_tasks for _ in range(G)]
            scores = score_batch(group_tasks, roll.texts, cfg.rewards, pool, cfg.language)
            rewards = torch.tensor([sum(weights[c] * s[c] for c in cfg.rewards) for s in scores])
            adv = group_advantages(rewards.view(P, G)).flatten().to(dist.device)
            rollout_seconds = time.time() - t0
            # on-policy (one update per batch, and the batch is one optimizer step): pi_old is the policy
            # of the update's own forward, so its detached log-probs serve and a pass is saved
            old = _policy_logprobs(module, roll.ids, micro, cfg.temperature) if cfg.updates_per_batch > 1 else None
            ref = _policy_logprobs(reference, roll.ids, micro, cfg.temperature)  # KL is logged even when beta is 0
            total_tokens = roll.response_mask.sum()
            stats_acc = {"kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
            for _ in range(cfg.updates_per_batch):
                for i in range(0, roll.ids.shape[0], micro):
                    sl = slice(i, i + micro)
                    ids = roll.ids[sl]
                    logp, entropy = token_logprobs(engine(ids[:, :-1]), ids[:, 1:], cfg.temperature)
                    mask = roll.response_mask[sl]
                    loss, st = grpo_loss(logp, logp.detach() if old is None else old[sl], ref[sl], adv[sl], mask,
                                         cfg.clip_eps, cfg.clip_eps_high or None, cfg.kl_beta, cfg.loss_aggregation,
                                         token_normalizer=total_tokens / (roll.ids.shape[0] // micro))
                    engine.backward(loss)
                    engine.step()
                    share = mask.sum().item() / max(1.0, total_tokens.item()) / cfg.updates_per_batch
                    stats_acc["kl"] += st.kl * share
                    stats_acc["clip_fraction"] += st.clip_fraction * share
                    stats_acc["entropy"] += ((entropy * mask).sum() / mask.sum().clamp(min=1)).item() * share
                module.update_router_biases()
            done = step + 1
            step_seconds = time.time() - t0
            metrics = {f"reward.{c}": sum(s[c] for s in scores) / len(scores) for c in cfg.rewards}
            if n_general:  # accuracy of the reasoning prompts and the proxy of the general ones, apart
                kinds = [t["kind"] == "general" for t in group_tasks]
                for label, want in (("reasoning", False), ("general", True)):
                    picked = [s["accuracy"] for s, k in zip(scores, kinds) if k == want]
                    metrics[f"accuracy.{label}"] = sum(picked) / len(picked)
            metrics.update(reward=rewards.mean().item(), accuracy=metrics.get("reward.accuracy", 0.0),
                           response_length=sum(roll.lengths) / len(roll.lengths), **stats_acc,
                           rollout_tokens_per_second=roll.generated_tokens / max(roll.seconds, 1e-9),
                           rollout_share=rollout_seconds / step_seconds, lr=scheduler.get_last_lr()[0],
                           solved_groups=(rewards.view(P, G).std(1) > 0).float().mean().item())
            history.append({"step": done, **metrics})
            if done % cfg.log_every == 0 or done == cfg.steps:
                report.metrics(metrics, step=done)
                report.info(f"step {done}/{cfg.steps} reward {metrics['reward']:.3f} acc {metrics['accuracy']:.3f} "
                            f"len {metrics['response_length']:.1f} kl {metrics['kl']:.4f} "
                            f"clip {metrics['clip_fraction']:.3f} rollout {metrics['rollout_share']:.0%}")
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save_checkpoint(engine, ckpt_dir, done * cfg.updates_per_batch, dist, {"history": history},
                                cfg.keep_checkpoints)
    finally:
        pool.close()
    return _finish(stage, profile, out, ckpt_dir, model_dir, tasks_path, module, history, before, report, start)


def _finish(stage, profile, out, ckpt_dir, model_dir, tasks_path, module, history, before, report, start) -> dict:
    from training.export import export_model

    # the module's own architecture (a dense student's too), without MTP: the policy was loaded without it
    export = export_model(module, module.config, model_dir, out / "export")
    after = heldout_report(export, tasks_path, profile, out, "end")
    summary = {
        **heldout_change(before, after), "steps": getattr(profile, stage.stage).steps, "resumed_from_step": start,
        "final_reward": history[-1]["reward"] if history else None,
        "checkpoint": str(complete_tags(ckpt_dir)[-1]), "export": str(export),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "history.json").write_text(json.dumps(history))
    if report.mlflow_run_id:
        from training.mlflow_model import log_and_register

        report.metrics({"heldout_pass_at_1_start": summary["heldout_pass@1_start"],
                        "heldout_pass_at_1": summary["heldout_pass@1"],
                        "heldout_pass_at_1_difference": summary["heldout_pass@1_difference"]}, step=summary["steps"])
        report.mlflow.log_dict({"start": before, "end": after}, "heldout.json")
        name = stage.mlflow.get("registered_model", f"seekflow-{stage.stage.replace('_', '-')}")
        summary["registered_model"] = f"{name}/{log_and_register(export, name, stage.mlflow.get('aliases', []))}"
    report.materialization({k: v for k, v in summary.items() if v is not None and not isinstance(v, list)})
    low, high = summary["heldout_pass@1_difference_ci"]
    report.info(f"held-out pass@1 {summary['heldout_pass@1_start']:.3f} {summary['heldout_pass@1_start_ci']} -> "
                f"{summary['heldout_pass@1']:.3f} {summary['heldout_pass@1_ci']}; paired by task "
                f"{summary['heldout_pass@1_difference']:+.3f} [{low:+.3f}, {high:+.3f}]")
    return summary


main = stage_main(train, "Seekflow GRPO (DeepSpeed)")


if __name__ == "__main__":
    raise SystemExit(main())
