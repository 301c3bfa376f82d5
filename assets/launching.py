"""Launching a training stage from an asset: preflight, stage config, launcher, MLflow run, metadata.

Every training asset (v3_base, r1_zero, the R1 stages, the students) goes through `launch_training`:
it validates the inputs before anything starts, opens the materialization's nested MLflow run,
writes the stage config (training/launch.py) with that run's id, and hands it to the `launcher`
resource (pipelines/launcher.py), which runs the process through Dagster Pipes. What the process
reports comes back as a dict of metadata.
"""

import base64
from pathlib import Path

import dagster as dg

from training import tracking
from training.data import ShardsError
from training.launch import StageConfig
from training.settings import ProfileError, data_dir


def code_version(context: dg.AssetExecutionContext) -> str:
    return context.assets_def.code_versions_by_key[context.asset_key] or ""


def image_markdown(png: Path) -> str:
    return f"![loss curve](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})"


def launch_training(context: dg.AssetExecutionContext, module: str, stage: str, inputs: dict[str, Path],
                    registered_model: str, preflight, output_dir: Path | None = None,
                    edit=None) -> tuple[dict, str, Path]:
    """Write the stage config, launch `module` through the launcher inside this materialization's
    MLflow run, and return (metadata reported by the process, MLflow run URL, output dir).

    `stage` names the profile section the trainer reads (and the output folder by default);
    `preflight(profile)` raises ValueError/ProfileError/ShardsError before anything starts;
    `edit(profile) -> profile` adapts the profile first (a student's model, its step budget)."""
    res = context.resources
    out = output_dir or data_dir(stage)
    try:
        profile = res.profile.load()
        if edit is not None:
            profile = edit(profile)
        preflight(profile)
    except (ValueError, ProfileError, ShardsError) as e:
        raise dg.Failure(description=f"{stage}: not launched: {e}") from None
    tags = {"seekflow.profile": profile.name, "seekflow.stage": stage, "seekflow.registered_model": registered_model}
    with res.mlflow_tracking.asset_run(context, code_version(context), tags=tags) as run:
        for name, folder in inputs.items():
            tracking.log_input_table(name, folder, context="training")
        config = StageConfig(
            stage=stage, profile=profile.to_dict(), output_dir=str(out), inputs={k: str(v) for k, v in inputs.items()},
            mlflow={"tracking_uri": tracking.mlflow.get_tracking_uri(), "run_id": run.info.run_id,
                    "registered_model": registered_model, "aliases": [profile.name]},
        )
        path = config.write(out / "stage.json")
        invocation = res.launcher.run(context, module, path, profile.launch, out, stage)
        url = tracking.run_url(run)
    reported = {}
    for result in invocation.get_results():
        reported.update({k: getattr(v, "value", v) for k, v in (result.metadata or {}).items()})
    return reported, url, out
