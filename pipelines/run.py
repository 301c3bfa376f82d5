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
    result = defs.resolve_job_def(args.job).execute_in_process(instance=instance, raise_on_error=False)
    took = time.time() - start
    print(f"\nDagster run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'} in {took:.0f} s")
    print("\n".join(_summary(instance, defs, result.run_id)))
    print(f"""
Where to look:
  make ui      -> Dagster UI at http://127.0.0.1:3000 (runs, asset graph, metadata, checks)
                  MLflow UI at http://127.0.0.1:5000  (experiment 'seekflow': one parent run per Dagster run)
  data         -> {seekflow_home() / 'data'}
  Dagster home -> {home}""")
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
