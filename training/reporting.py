"""What a training process reports, and to whom: log files, MLflow (rank 0) and Dagster Pipes (rank 0).

Every rank logs to `<output_dir>/logs/rank<r>.log` (uncaught exceptions included), so a crash leaves
its traceback where the asset can quote it. Rank 0 also writes to stdout, logs metrics to the MLflow
run the asset opened for it, and, when Dagster launched the process, sends log lines and the final
materialization metadata back through Dagster Pipes (`dagster_pipes` only: no `dagster` import).
Started by hand (`python -m training.pretrain --config FILE`), the same code runs without Pipes.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, PipesContext, open_dagster_pipes

LOG_TAIL_LINES = 60


def setup_logging(output_dir: Path, rank: int) -> logging.Logger:
    log_dir = Path(output_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("seekflow.train")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(message)s")
    file_handler = logging.FileHandler(log_dir / f"rank{rank}.log")
    file_handler.setFormatter(fmt)
    logger.addHandler(file_handler)
    if rank == 0:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(fmt)
        logger.addHandler(stream)

    def excepthook(kind, value, tb):  # the traceback goes to the log file the asset quotes
        logger.error("training process failed:\n%s", "".join(traceback.format_exception(kind, value, tb)))
        sys.__excepthook__(kind, value, tb)

    sys.excepthook = excepthook
    return logger


def log_tail(output_dir: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of every rank's log, for an error message."""
    parts = []
    for f in sorted((Path(output_dir) / "logs").glob("rank*.log")):
        text = f.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {f.name} (last {len(text)} lines) ---\n" + "\n".join(text))
    return "\n".join(parts) or f"(no log under {output_dir}/logs)"


class Reporter:
    """Rank 0's outlets. Other ranks get an instance whose every call does nothing."""

    def __init__(self, rank: int, logger: logging.Logger, mlflow_cfg: dict | None):
        self.active = rank == 0
        self.logger = logger
        self.pipes: PipesContext | None = None
        self._pipes_cm = None
        self.mlflow_run_id = None
        if not self.active:
            return
        if os.environ.get(DAGSTER_PIPES_CONTEXT_ENV_VAR):
            self._pipes_cm = open_dagster_pipes()
            self.pipes = self._pipes_cm.__enter__()
        if mlflow_cfg and mlflow_cfg.get("run_id"):
            from training import tracking

            tracking.configure(mlflow_cfg.get("tracking_uri") or None)
            import mlflow

            self.mlflow = mlflow
            self.mlflow_run_id = mlflow_cfg["run_id"]
            # system metrics (CPU, memory, GPU) sampled by MLflow in a background thread
            mlflow.start_run(run_id=self.mlflow_run_id, log_system_metrics=True)

    def info(self, msg: str) -> None:
        self.logger.info(msg)
        if self.pipes is not None:
            self.pipes.log.info(msg)

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.active and self.mlflow_run_id:
            self.mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def params(self, values: dict[str, Any]) -> None:
        if self.active and self.mlflow_run_id:
            self.mlflow.log_params({k: str(v)[:500] for k, v in values.items()})

    def materialization(self, metadata: dict[str, Any]) -> None:
        if self.pipes is not None:
            # NOTE: Pipes reads a plain dict value as {raw_value, type}: tables and lists go as json
            typed = {k: {"raw_value": v, "type": "json"} if isinstance(v, (dict, list)) else v
                     for k, v in metadata.items() if v is not None}
            self.pipes.report_asset_materialization(metadata=typed)

    def close(self, failed: bool = False) -> None:
        if not self.active:
            return
        if self.mlflow_run_id:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
        if self._pipes_cm is not None:
            exc = (RuntimeError, RuntimeError("training failed"), None) if failed else (None, None, None)
            self._pipes_cm.__exit__(*exc)
