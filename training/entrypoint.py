"""The frame every trainer runs in: `python -m training.<stage> --config FILE` (training/launch.py).

`run_stage` sets up what the process needs before any training code runs (the process group, the
per-rank log file, the CPU thread count, the Reporter to MLflow and Dagster Pipes) and closes the
Reporter as failed when the body raises, so the asset sees a failed run instead of a silent one.
`stage_main` is the command line: a stage config file, and the `--local_rank` the deepspeed
launcher appends.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

from training import distributed
from training.distributed import Dist
from training.launch import StageConfig
from training.reporting import Reporter, setup_logging


def run_stage(stage: StageConfig, threads: int, body: Callable[[Dist, Reporter], dict]) -> dict:
    """`body(dist, report)` inside the frame; `threads` 0 keeps torch's default."""
    dist = distributed.init()
    logger = setup_logging(Path(stage.output_dir), dist.rank)
    if threads:
        torch.set_num_threads(threads)
    report = Reporter(dist.rank, logger, stage.mlflow)
    failed = True
    try:
        result = body(dist, report)
        failed = False
        return result
    finally:
        report.close(failed=failed)


def stage_main(train: Callable[[StageConfig], dict], description: str) -> Callable[[list[str] | None], int]:
    """A trainer's `main(argv)`: reads the stage config and calls `train` with it."""

    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--config", required=True, type=Path, help="stage config JSON (training/launch.py)")
        parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
        args = parser.parse_args(argv)
        train(StageConfig.read(args.config))
        return 0

    return main
