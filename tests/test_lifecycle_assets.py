"""The R1 stages, distillation and the report card materialize in-process on the tiny profile (cut
to a few steps each), each stage reading what the one before wrote, and the report lists every model."""

import shutil

import dagster as dg
import mlflow
import pytest

from assets.distillation import STUDENTS, distilled_students, r1_distillation_samples
from assets.evaluation import eval_report, model_exports
from assets.r1 import r1_assets
from assets.resources import MLflowTracking, SeekflowProfile
from pipelines.launcher import TrainingLauncher
from tests.pretrain_fixtures import as_run_config, build_shards, untrained_export
from training.settings import load_profile
from training.tasks import make_tasks

pytestmark = pytest.mark.timeout(1500)

FAST = {
    "tasks.counts": "{arithmetic: 12, linear: 12, countdown: 12, word: 12, code: 4}", "tasks.difficulties": "[1]",
    "evaluation.k": 1, "evaluation.limit": 6, "evaluation.max_new_tokens": 8,
    "cold_start.prompts": 6, "cold_start.samples_per_prompt": 2, "cold_start.max_new_tokens": 8, "cold_start.worked": 12,
    "rejection.worked": 6, "distillation.samples.worked": 6,  # an untrained model passes no sample
    "rejection.prompts": 6, "rejection.samples_per_prompt": 2, "rejection.max_new_tokens": 8,
    "distillation.samples.prompts": 6, "distillation.samples.samples_per_prompt": 2,
    "distillation.samples.max_new_tokens": 8, "distillation.student_pretrain_steps": 2,
    "pretrain.global_batch_size": 8, "pretrain.micro_batch_size": 4, "pretrain.eval_batches": 1, "pretrain.threads": 1,
    **{f"{s}.max_steps": 2 for s in ("r1_cold", "r1_sft", "distill_sft")},
    **{f"{s}.{k}": v for s in ("r1_reasoning_rl", "r1", "student_grpo")
       for k, v in {"steps": 1, "prompts_per_step": 4, "group_size": 4, "micro_batch_size": 8, "max_new_tokens": 8,
                    "threads": 1, "difficulties": "[]"}.items()},
}


@pytest.fixture(scope="module")
def lifecycle_home(tmp_path_factory):
    """Shards, tasks, and untrained models standing in for v3_base and r1_zero (their own tests
    train them); every later stage is built for real on top."""
    home = tmp_path_factory.mktemp("lifecycle")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEEKFLOW_HOME", str(home))
        tok_dir, _ = build_shards(home)
        profile = load_profile("tiny", {"tasks.counts": {"arithmetic": 12, "linear": 12, "countdown": 12, "word": 12,
                                                         "code": 4}, "tasks.difficulties": [1]})
        make_tasks(profile.tasks, home / "data" / "reasoning_tasks")
        untrained_export(home / "data" / "v3_base" / "export", profile.model, tok_dir)
        shutil.copytree(home / "data" / "v3_base" / "export", home / "data" / "r1_zero" / "export")
    return home


def test_r1_distillation_and_report_card(lifecycle_home, monkeypatch):
    home = lifecycle_home
    monkeypatch.setenv("SEEKFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{home}/mlflow.db"
    resources = {"profile": SeekflowProfile(name="tiny", overrides=as_run_config(FAST)),
                 "mlflow_tracking": MLflowTracking(tracking_uri=uri), "launcher": TrainingLauncher(kind="local")}
    instance = dg.DagsterInstance.ephemeral()

    r1_run = dg.materialize(r1_assets, resources=resources, instance=instance, raise_on_error=False)
    assert r1_run.success
    for asset in ("cold_start_sft", "r1_cold", "r1_reasoning_rl", "rejection_sampled_sft", "r1_sft", "r1"):
        assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
    mix = instance.get_latest_materialization_event(dg.AssetKey("rejection_sampled_sft")).asset_materialization.metadata
    assert "mix" in mix and "acceptance" in mix, sorted(mix)  # acceptance per task family, the mix

    students = STUDENTS.get_partition_keys()
    assert students == ["dense-half", "dense-quarter"]  # the tiny profile's, largest first
    for student in students:
        run = dg.materialize([r1_distillation_samples, distilled_students], resources=resources, instance=instance,
                             partition_key=student, selection=[distilled_students] if student != students[0] else None,
                             raise_on_error=False)
        assert run.success, student

    report_run = dg.materialize([eval_report], resources=resources, instance=instance, raise_on_error=False)
    assert report_run.success
    report = (home / "report.md").read_text()
    for name in model_exports():
        assert name in report, f"{name} missing from the report card"
    md = instance.get_latest_materialization_event(dg.AssetKey("eval_report")).asset_materialization.metadata
    assert md["missing"].value == [] and md["models"].value == len(model_exports()) == 9

    mlflow.set_tracking_uri(uri)
    registered = {m.name for m in mlflow.MlflowClient().search_registered_models()}
    assert {"seekflow-r1-cold", "seekflow-r1-reasoning-rl", "seekflow-r1-sft", "seekflow-r1",
            "seekflow-student-dense-half", "seekflow-student-dense-quarter",
            "seekflow-student-dense-quarter-grpo"} <= registered
