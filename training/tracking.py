"""MLflow tracking shared by the assets and the training processes (no Dagster import).

Layout: one parent run per Dagster run (tag `dagster.run_id`), one nested run per asset
materialization (tags `seekflow.asset`, `seekflow.code_version`), upstream tables logged as input
datasets with their digests. The default store is SQLite under SEEKFLOW_HOME; a server URI replaces it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

# NOTE: set before mlflow is imported anywhere: no usage data leaves the machine
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import mlflow  # noqa: E402
from mlflow.data.dataset_source_registry import resolve_dataset_source  # noqa: E402
from mlflow.data.meta_dataset import MetaDataset  # noqa: E402

from training.settings import seekflow_home  # noqa: E402

EXPERIMENT = "seekflow"
RUN_ID_TAG = "dagster.run_id"


def default_tracking_uri() -> str:
    db = seekflow_home() / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"  # db is absolute, so this has the four slashes SQLite URIs need


def default_artifact_root() -> str:
    return str(seekflow_home() / "mlflow" / "artifacts")


def configure(tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = Path(default_artifact_root()).as_uri() if uri.startswith("sqlite") else None
        try:
            mlflow.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            pass  # created by a concurrent step
    mlflow.set_experiment(experiment)
    return uri


@contextmanager
def _lock(name: str):
    path = seekflow_home() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def parent_run_id(dagster_run_id: str, job_name: str = "") -> str:
    """The MLflow run of this Dagster run, created by the first step that asks (steps may run in parallel)."""
    with _lock(f"parent-{dagster_run_id}"):
        # nested runs carry the Dagster run id too: the role tag tells the parent apart
        found = mlflow.search_runs(filter_string=f"tags.`{RUN_ID_TAG}` = '{dagster_run_id}' and tags.`seekflow.role` = 'parent'",
                                   output_format="list", max_results=1)
        if found:
            return found[0].info.run_id
        run = mlflow.MlflowClient().create_run(
            mlflow.get_experiment_by_name(EXPERIMENT).experiment_id,
            run_name=f"dagster-{job_name or 'run'}-{dagster_run_id[:8]}",
            tags={RUN_ID_TAG: dagster_run_id, "dagster.job": job_name, "seekflow.role": "parent"},
        )
        return run.info.run_id


def table_digest(folder: Path) -> str:
    """A cheap digest of a parquet table folder: names, sizes and mtimes of its files."""
    h = hashlib.sha1()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def log_input_table(name: str, folder: Path, context: str = "upstream") -> str:
    digest = table_digest(folder)
    with warnings.catch_warnings():  # a local path matches MLflow's local-artifact source twice; either is right
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(folder))
    mlflow.log_input(MetaDataset(source, name=name, digest=digest), context=context)
    return digest


@contextmanager
def asset_run(dagster_run_id: str, job_name: str, asset: str, code_version: str, tags: dict | None = None):
    """A nested MLflow run for one asset materialization, under its Dagster run's parent."""
    parent = parent_run_id(dagster_run_id, job_name)
    all_tags = {RUN_ID_TAG: dagster_run_id, "seekflow.asset": asset, "seekflow.code_version": code_version,
                **(tags or {})}
    # parent_run_id (not the fluent run stack): steps of one Dagster run may share a process
    with mlflow.start_run(run_name=asset, parent_run_id=parent, tags=all_tags, log_system_metrics=False) as run:
        yield run
    # the parent shows as finished once its latest child is; a later step simply marks it again
    mlflow.MlflowClient().set_terminated(parent)


def run_url(run) -> str:
    """Where the run is in the MLflow UI started by `make ui` (or the tracking server)."""
    base = os.environ.get("SEEKFLOW_MLFLOW_UI", "http://127.0.0.1:5000")
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):
        base = uri
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
