"""A changed source (new DataVersion) makes the eager corpus assets rebuild; an unchanged one does not."""

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from pipelines.definitions import defs

CORPUS = ["web_documents", "code_documents", "filtered_web", "filtered_code", "deduplicated_corpus", "tokenizer",
          "pretraining_shards"]


def _observe(instance, key: str, version: str) -> None:
    instance.report_runless_asset_event(dg.AssetObservation(asset_key=key, tags={DATA_VERSION_TAG: version}))


def _requested(result) -> set[str]:
    return {r.key.to_user_string() for r in result.results if r.true_subset.size > 0}


def test_new_source_version_requests_downstream_rebuild():
    instance = dg.DagsterInstance.ephemeral()
    _observe(instance, "web_sources", "v1")
    _observe(instance, "code_sources", "v1")
    for key in CORPUS:
        instance.report_runless_asset_event(dg.AssetMaterialization(key))
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)

    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert not _requested(quiet) & set(CORPUS), "nothing changed, yet a rebuild was requested"

    _observe(instance, "web_sources", "v2")
    changed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
    assert "web_documents" in _requested(changed)
    assert "code_documents" not in _requested(changed)


def test_automation_sensor_and_observation_schedule_are_on_by_default():
    sensor = defs.resolve_sensor_def("seekflow_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    schedule = next(s for s in defs.schedules if s.job_name == "observe_sources")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_training_waits_for_cron_and_only_retrains_on_changed_inputs():
    import datetime

    instance = dg.DagsterInstance.ephemeral()
    for key in [*CORPUS, "v3_base"]:
        instance.report_runless_asset_event(dg.AssetMaterialization(key))
    start = datetime.datetime(2026, 11, 30, 1, 0, tzinfo=datetime.timezone.utc)  # before the 03:00 tick

    def evaluate(at, cursor):
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets("v3_base"),
                                                 evaluation_time=at, cursor=cursor)

    first = evaluate(start, None)
    # a new corpus: shards are rebuilt at once (eager), the model is not
    instance.report_runless_asset_event(dg.AssetMaterialization("pretraining_shards"))
    before_tick = evaluate(start + datetime.timedelta(minutes=30), first.cursor)
    assert "v3_base" not in _requested(before_tick), "a corpus change started training outside the cron tick"
    at_tick = evaluate(start + datetime.timedelta(hours=2, minutes=1), before_tick.cursor)
    assert "v3_base" in _requested(at_tick), "inputs changed and the cron tick passed, yet no retraining"

    instance.report_runless_asset_event(dg.AssetMaterialization("v3_base"))
    next_day = evaluate(start + datetime.timedelta(days=1, hours=2, minutes=1), at_tick.cursor)
    assert "v3_base" not in _requested(next_day), "inputs unchanged, yet the model was retrained"
