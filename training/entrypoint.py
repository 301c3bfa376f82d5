"""The frame every trainer runs in: `python -m training.<stage> --config FILE` (training/launch.py).

`run_stage` sets up what the process needs before any training code runs (the process group, the
per-rank log file, the CPU thread count, the Reporter to MLflow and Dagster Pipes) and closes the
Reporter as failed when the body raises, so the asset sees a failed run instead of a silent one.
`stage_main` is the command line: a stage config file, and the `--local_rank` the deepspeed
launcher appends. There SIGTERM unwinds the process like Ctrl-C (`Terminated`).
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Callable

import torch

from kernels.autoselect import CHOICES_ENV, set_timing
from training import distributed
from training.distributed import Dist
from training.launch import StageConfig
from training.reporting import Reporter, setup_logging


class Terminated(SystemExit):
    """SIGTERM as an exception, so that `finally` blocks run: the way DeepSpeed's launcher (when Dagster
    cancels a run), torchrun, Slurm and Kubernetes stop a trainer. Python's default for SIGTERM is to die
    on the spot, which leaves behind what a `finally` would release. NOTE: the worst of it is torch's
    extension build lock (`<TORCH_EXTENSIONS_DIR>/<op>/lock`), which every DeepSpeed start takes for a
    second or two: left behind, it makes every later start on that machine wait forever. The process
    exits with 143, as a shell reports a process killed by SIGTERM."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_terminated(signum: int, frame: object) -> None:
    # a second SIGTERM during the unwinding kills at once (the default), as a user who insists expects
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def kernel_choices_file(stage: StageConfig) -> Path:
    """Where a stage records its kernel choices: one file per output folder, keyed inside by machine."""
    return Path(stage.output_dir) / "checkpoints" / "kernel_choices.json"


def run_stage(stage: StageConfig, threads: int, body: Callable[[Dist, Reporter], dict]) -> dict:
    """`body(dist, report)` inside the frame; `threads` 0 keeps torch's default."""
    dist = distributed.init()
    logger = setup_logging(Path(stage.output_dir), dist.rank)
    if threads:
        torch.set_num_threads(threads)
    report = Reporter(dist.rank, logger, stage.mlflow)
    # the GPU kernels' per-shape backend choices (kernels/autoselect.py) are recorded beside the
    # checkpoints, so a resumed run computes with the same kernels as the run it continues; a
    # choices file the user set is kept, and the variable is restored for later in-process stages
    inherited = os.environ.get(CHOICES_ENV)
    os.environ[CHOICES_ENV] = inherited or str(kernel_choices_file(stage))
    # NOTE: on a CPU a stage repeats bit for bit (same machine, same thread count) only with
    # deterministic algorithms: the backward of the experts' gather `x[token]` (index_put_ with
    # accumulate) otherwise adds float rows from several threads with atomics, and the tiny
    # profile's losses drifted apart from the same seed by step 30 (2026-12-05). The serial version
    # costs nothing measurable there (pretraining 5,270-5,420 tok/s against 5,000-5,040; GRPO the
    # same 24 s for 11 steps). GPUs keep the fast kernels (cuBLAS and the atomics would
    # need CUBLAS_WORKSPACE_CONFIG and slower paths).
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if dist.device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    failed = True
    try:
        result = body(dist, report)
        failed = False
        return result
    except Terminated:
        report.info("stopped by SIGTERM: the run is closed as failed")
        raise
    finally:
        report.close(failed=failed)
        if inherited is None:
            del os.environ[CHOICES_ENV]
        set_timing("launch")  # pretrain.cuda_graphs switches it to device time for its own blocks
        torch.use_deterministic_algorithms(deterministic_before)


def stage_main(train: Callable[[StageConfig], dict], description: str) -> Callable[[list[str] | None], int]:
    """A trainer's `main(argv)`: reads the stage config and calls `train` with it."""

    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--config", required=True, type=Path, help="stage config JSON (training/launch.py)")
        parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
        args = parser.parse_args(argv)
        # only on the command line, where the process is the trainer's own, and only over the default:
        # a caller that set its own handler keeps it
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_terminated)
        train(StageConfig.read(args.config))
        return 0

    return main
