"""`make run`: materialize the whole graph on the current profile (default tiny), then say where to look.

    python -m pipelines.run [--job full_lifecycle] [--profile tiny]

The run is recorded in the Dagster instance under $SEEKFLOW_HOME/dagster, so the Dagster UI
(`make ui`) shows it, its asset metadata and checks; MLflow holds the matching runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _summary(instance, defs, run_id: str) -> list[str]:
    import dagster as dg

    lines = []
    for key in sorted(defs.resolve_asset_graph().get_all_asset_keys(), key=lambda k: k.to_user_string()):
        event = instance.get_latest_materialization_event(key)
        if event is None or event.run_id != run_id:
            continue
        md = event.asset_materialization.metadata
        shown = {k: v.value for k, v in md.items() if k in (
            "documents_in", "documents_kept", "documents_excluded", "clusters", "vocab_size",
            "train_tokens", "validation_tokens", "validation_loss", "unigram_entropy", "tokens_per_second",
            "resumed_from_step", "registered_model")}
        lines.append(f"  {key.to_user_string():22s} {shown}")
    checks = instance.event_log_storage.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    failed = [r.event_log_entry.dagster_event.event_specific_data for r in checks
              if not r.event_log_entry.dagster_event.event_specific_data.passed]
    lines.append(f"  asset checks: {len(checks) - len(failed)} passed, {len(failed)} failed")
    lines += [f"    FAILED {c.asset_key.to_user_string()}:{c.check_name}" for c in failed]
    return lines


def _runs(defs, job_name: str, instance):
    """Execute `job_name` as Dagster runs, yielding each result; stops at the first failure.

    A job whose assets are all unpartitioned is one run. When it holds partitioned assets (the
    students of `distilled_students`, one partition each), a run needs a partition key: the first
    run takes the first key and every unpartitioned asset upstream of the partitioned ones, one run
    per further key materializes only the partitioned assets, and a last run materializes what
    depends on all partitions (the report card). The Dagster UI does the same as a backfill.
    """
    import dagster as dg

    job = defs.resolve_job_def(job_name)
    graph = defs.resolve_asset_graph()
    keys = set(job.asset_layer.selected_asset_keys)
    partitioned = {k for k in keys if graph.get(k).partitions_def is not None}
    if not partitioned:
        yield job.execute_in_process(instance=instance, raise_on_error=False)
        return
    partition_keys = graph.get(next(iter(partitioned))).partitions_def.get_partition_keys()
    downstream = dg.AssetSelection.assets(*partitioned).downstream(include_self=False).resolve(graph) & keys
    first = sorted(keys - downstream, key=str)
    plan = [(partition_keys[0], first)] + [(p, sorted(partitioned, key=str)) for p in partition_keys[1:]]
    if downstream:
        plan.append((None, sorted(downstream, key=str)))
    for partition, selection in plan:
        result = job.execute_in_process(instance=instance, raise_on_error=False, partition_key=partition,
                                        asset_selection=selection)
        yield result
        if not result.success:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="full_lifecycle")
    parser.add_argument("--profile", default=None, help="infra/profiles/<name>.yaml (default: $SEEKFLOW_PROFILE or tiny)")
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["SEEKFLOW_PROFILE"] = args.profile

    from pipelines.home import dagster_home

    home = dagster_home()
    from training.corpus.sources import SourceError, resolve_sources
    from training.settings import ProfileError, load_profile, seekflow_home

    # fail before any work on a bad profile field or a missing source path
    try:
        profile = load_profile()
        for kind in ("web", "code"):
            resolve_sources(kind, profile.corpus)
    except (ProfileError, SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import dagster as dg

    from pipelines.definitions import defs

    instance = dg.DagsterInstance.get()
    print(f"Seekflow: profile {profile.name!r}, job {args.job!r}, SEEKFLOW_HOME={seekflow_home()}")
    start = time.time()
    results = [run for run in _runs(defs, args.job, instance)]
    took = time.time() - start
    ok = all(r.success for r in results)
    print(f"\n{len(results)} Dagster run(s): {'SUCCESS' if ok else 'FAILURE'} in {took:.0f} s")
    for result in results:
        print(f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
        print("\n".join(_summary(instance, defs, result.run_id)))
    report = seekflow_home() / "report.md"
    if report.is_file():
        print(f"\nReport card: {report}")
    print(f"""
Where to look:
  make ui      -> Dagster UI at http://127.0.0.1:3000 (runs, asset graph, metadata, checks)
                  MLflow UI at http://127.0.0.1:5000  (experiment 'seekflow': one parent run per Dagster run)
  data         -> {seekflow_home() / 'data'}
  Dagster home -> {home}""")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
