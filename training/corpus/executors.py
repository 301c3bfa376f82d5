"""Run a datatrove pipeline on the configured executor: local processes, Slurm, or Ray.

The pipeline is the same object whichever executor runs it; only this file knows the difference.
Each run logs under its own folder, where datatrove writes a completion marker per task: relaunching
the same (Dagster) run resumes, skipping finished tasks; a new run gets a new folder and starts over.

Slurm submission returns at once, so `run_stage` waits on the completion markers of every task
(the same markers datatrove's own `depends=` chaining uses) before the next stage reads the output.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from datatrove.utils.stats import PipelineStats

from training.settings import ExecutorConfig


class StageFailed(RuntimeError):
    """A datatrove stage did not complete all its tasks."""


def _executor(pipeline: list, cfg: ExecutorConfig, logging_dir: Path, tasks: int, workers: int, job_name: str):
    if cfg.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logging_dir),
            skip_completed=True,
        )
    if cfg.kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not cfg.slurm_partition:
            raise ValueError("executor.slurm_partition is empty; set the Slurm partition to submit to")
        return SlurmPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=workers, time=cfg.slurm_time, partition=cfg.slurm_partition,
            cpus_per_task=cfg.slurm_cpus_per_task, mem_per_cpu_gb=cfg.slurm_mem_per_cpu_gb, job_name=job_name,
            logging_dir=str(logging_dir), skip_completed=True,
        )
    if cfg.kind == "ray":
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir),
            cpus_per_task=cfg.ray_cpus_per_task, skip_completed=True,
        )
    raise ValueError(f"executor.kind is {cfg.kind!r}; accepted: local, slurm, ray")


def _wait_for_completions(logging_dir: Path, tasks: int, poll_s: float = 30.0, timeout_s: float = 7 * 24 * 3600):
    marker_dir = logging_dir / "completions"
    deadline = time.monotonic() + timeout_s
    while True:
        done = len(list(marker_dir.glob("*"))) if marker_dir.is_dir() else 0
        if done >= tasks:
            return
        if time.monotonic() > deadline:
            raise StageFailed(f"{logging_dir}: {done}/{tasks} tasks completed after {timeout_s:.0f}s")
        time.sleep(poll_s)


def read_stats(logging_dir: Path) -> dict[str, dict]:
    """Per step name: its counters (total, forwarded, dropped, dropped_<reason>, ...) summed over tasks."""
    merged = PipelineStats()
    stats_dir = logging_dir / "stats"
    for f in sorted(stats_dir.glob("*.json")) if stats_dir.is_dir() else []:
        with f.open() as fh:
            merged += PipelineStats.from_json(json.load(fh))
    out: dict[str, dict] = {}
    for step in merged.stats:
        counters = {}
        for key, metric in step.stats.items():
            value = metric.total if hasattr(metric, "total") else metric
            counters[key] = value.get("total", 0) if isinstance(value, dict) else value  # {"total", "n", "mean"} form
        out[step.name.split(": ", 1)[-1]] = counters  # "📖 - READER: 📚 source reader" -> "📚 source reader"
    return out


def run_stage(
    pipeline: list,
    cfg: ExecutorConfig,
    logging_dir: Path,
    *,
    tasks: int | None = None,
    job_name: str = "seekflow",
) -> dict[str, dict]:
    """Run `pipeline` over `tasks` shards (default: the profile's) and return its merged step stats."""
    tasks = tasks or cfg.tasks
    logging_dir.mkdir(parents=True, exist_ok=True)
    executor = _executor(pipeline, cfg, logging_dir, tasks, cfg.workers, job_name)
    executor.run()
    if cfg.kind == "slurm":
        _wait_for_completions(logging_dir, tasks)
    incomplete = executor.get_incomplete_ranks(skip_completed=True)
    if incomplete:
        raise StageFailed(f"{job_name}: tasks {list(incomplete)[:10]} did not complete; logs in {logging_dir}/logs")
    return read_stats(logging_dir)
