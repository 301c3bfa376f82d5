"""The Seekflow code location: every asset group, its jobs, automation and resources.

Loaded by `workspace.yaml` (`dagster dev`), by `python -m pipelines.run` and by the tests.
"""

from __future__ import annotations

import warnings

import dagster as dg

# observable_source_asset is marked beta; it is the documented way to version external sources
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from assets.corpus import code_sources, corpus_assets, web_sources
from assets.distillation import distillation_assets
from assets.evaluation import evaluation_assets
from assets.pretraining import pretraining_assets
from assets.r1 import r1_assets
from assets.r1_zero import r1_zero_assets
from assets.resources import MLflowTracking, SeekflowProfile
from pipelines.launcher import TrainingLauncher


GROUPS = {
    "corpus": "Sources to packed token shards (datatrove)",
    "pretraining": "Train v3_base on the current shards (resumes from its last checkpoint)",
    "r1_zero": "Reasoning tasks, then GRPO from v3_base (R1-Zero)",
    "r1": "Cold start, reasoning RL, rejection sampling, SFT from base, final RL",
    "distillation": "r1's samples, then the dense students (one run per student partition)",
    "evaluation": "The report card across every model",
}
# `<group>_job`: a job may not share its name with an asset (`r1`, `r1_zero`)
group_jobs = [dg.define_asset_job(f"{name}_job", selection=dg.AssetSelection.groups(name), description=desc)
              for name, desc in GROUPS.items()]
full_lifecycle_job = dg.define_asset_job("full_lifecycle", selection=dg.AssetSelection.all(),
                                         description="Materialize every asset, sources to the last stage")
observe_sources_job = dg.define_asset_job("observe_sources", selection=[web_sources, code_sources],
                                          description="Fingerprint the sources (new DataVersion on any change)")

# Sources are fingerprinted every 15 minutes; a new DataVersion makes the eager corpus assets stale,
# and the automation sensor (on by default) then rebuilds them.
observe_sources_schedule = dg.ScheduleDefinition(
    job=observe_sources_job, cron_schedule="*/15 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING,
)
automation_sensor = dg.AutomationConditionSensorDefinition(
    "seekflow_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
)

defs = dg.Definitions(
    assets=[*corpus_assets, *pretraining_assets, *r1_zero_assets, *r1_assets, *distillation_assets, *evaluation_assets],
    jobs=[*group_jobs, full_lifecycle_job, observe_sources_job],
    schedules=[observe_sources_schedule],
    sensors=[automation_sensor],
    resources={"profile": SeekflowProfile(), "mlflow_tracking": MLflowTracking(), "launcher": TrainingLauncher()},
)
