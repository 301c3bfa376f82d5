"""One held-out evaluation per (model weights, task table, evaluation settings), shared by every stage.

GRPO stages measure their start and final models; the report card measures every model. Evaluating
on a 2-core CPU costs about as much as a short training stage, so results are kept under
$SEEKFLOW_HOME/data/evaluations/<key>/ and reused: the key hashes the model's config and weights,
the task table, the settings and the rewards' version, so a changed model, setting or reward is
evaluated afresh and an unchanged one never twice. Every model is measured by the same code (training/evaluate.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from training import rewards
from training.evaluate import EvalConfig, evaluate, summary_path
from training.settings import data_dir

CHUNK = 1 << 20


def _file_digest(path: Path, h) -> None:
    """Size, first and last MiB: enough to tell weight files apart without reading gigabytes."""
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        h.update(f.read(CHUNK))
        if size > 2 * CHUNK:
            f.seek(-CHUNK, 2)
            h.update(f.read(CHUNK))


def evaluation_key(model_dir: Path, tasks_path: Path, cfg: EvalConfig) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.safetensors")) + [Path(model_dir) / "config.json", Path(tasks_path)]:
        _file_digest(f, h)
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(f"rewards:{rewards.REWARDS_VERSION}".encode())
    return h.hexdigest()[:20]


def evaluate_cached(model_dir: Path, tasks_path: Path, cfg: EvalConfig, cache_dir: Path | None = None) -> tuple[dict, Path]:
    """(summary, results parquet) of `model_dir` on the held-out split, computed once."""
    cache_dir = cache_dir or data_dir("evaluations")
    out = cache_dir / evaluation_key(model_dir, tasks_path, cfg) / "results.parquet"
    if out.is_file() and summary_path(out).is_file():
        return json.loads(summary_path(out).read_text()), out
    return evaluate(Path(model_dir), Path(tasks_path), out, cfg), out
