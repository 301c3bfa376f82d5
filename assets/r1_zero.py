"""The `r1_zero` asset group: verifiable reasoning tasks, and GRPO straight from the base model.

- `reasoning_tasks`: generated math and code tasks with difficulty levels, plus the user's own sets
  (training/tasks), split into train and held-out by template instance. A blocking check measures
  n-gram overlap between the held-out prompts and `deduplicated_corpus`: above the profile's
  threshold the held-out scores would measure memory, not reasoning, and nothing downstream runs.
- `r1_zero`: GRPO (training/grpo.py) from `v3_base` on the train split with the accuracy and
  format rewards only, launched and tracked like `v3_base`, registered as `seekflow-r1-zero`. Its
  metadata holds held-out pass@1 (k samples, 95% interval) of the start and the final model.
"""

import json

import dagster as dg
import mlflow

from assets.corpus import deduplicated_corpus
from assets.launching import code_version, launch_training
from assets.pretraining import ON_CRON_IF_INPUTS_CHANGED, v3_base
from training import tracking
from training.settings import data_dir
from training.tasks import make_tasks
from training.tasks.decontaminate import contamination

GROUP = "r1_zero"
DECONTAMINATED = "heldout_not_in_corpus"
IMPROVED = "heldout_pass_at_1_improved"
PAIRED = "paired by task: its 95% interval lies above 0 (the report card's 'helped')"


@dg.asset(
    group_name=GROUP, deps=[deduplicated_corpus], code_version="1", automation_condition=dg.AutomationCondition.eager(),
    required_resource_keys={"profile", "mlflow_tracking"}, kinds={"parquet", "duckdb"},
    check_specs=[dg.AssetCheckSpec(DECONTAMINATED, asset="reasoning_tasks", blocking=True,
                                   description="held-out prompts share no long n-gram with the pretraining corpus")],
)
def reasoning_tasks(context: dg.AssetExecutionContext):
    """Verifiable tasks (arithmetic, linear equations, countdown, word problems, code with hidden
    tests) and user sets; train / held-out split by template instance; decontaminated."""
    p = context.resources.profile.load()
    out = data_dir("reasoning_tasks")
    summary = make_tasks(p.tasks, out)
    import pyarrow.parquet as pq

    heldout = {r["id"]: r["prompt"] for r in pq.read_table(out / "tasks.parquet", columns=["id", "prompt", "split"])
               .to_pylist() if r["split"] == "heldout"}
    corpus = data_dir("deduplicated_corpus")
    contam = contamination(heldout, corpus, p.tasks.decontamination_n, p.tasks.decontamination_whole_prompt_tokens)
    (out / "contamination.json").write_text(json.dumps(contam, indent=2))
    with context.resources.mlflow_tracking.asset_run(context, code_version(context)) as run:
        mlflow.log_params({f"tasks.{k}": str(v)[:500] for k, v in vars(p.tasks).items()})
        tracking.log_input_table("deduplicated_corpus", corpus / "documents")
        mlflow.log_metrics({"tasks": summary["tasks"], "excluded": summary["excluded"],
                            "heldout_contaminated_share": contam["share"],
                            **{f"tasks.{s}": n for s, n in summary["by_split"].items()}})
        mlflow.log_dict(summary, "summary.json")
        mlflow.log_dict(contam, "contamination.json")
        url = tracking.run_url(run)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out / "tasks.parquet")),
            "tasks": summary["tasks"], "by_split": dg.MetadataValue.json(summary["by_split"]),
            "by_family": dg.MetadataValue.json(summary["by_family"]),
            "excluded": summary["excluded"], "excluded_by_reason": dg.MetadataValue.json(summary["excluded_by_reason"]),
            "shortfall": dg.MetadataValue.json(summary["shortfall"]), "mlflow_run": dg.MetadataValue.url(url),
        },
        check_results=[dg.AssetCheckResult(
            check_name=DECONTAMINATED, passed=contam["share"] <= p.tasks.max_contaminated_share,
            metadata={"contaminated": contam["contaminated"], "heldout": contam["tasks"], "share": contam["share"],
                      "threshold": p.tasks.max_contaminated_share,
                      "examples": dg.MetadataValue.json(contam["examples"][:5])})],
    )


def _check_tasks(profile, tasks_dir, model_dir) -> None:
    if not (tasks_dir / "tasks.parquet").is_file():
        raise ValueError(f"no task table at {tasks_dir / 'tasks.parquet'} (materialize `reasoning_tasks` first)")
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"no model export at {model_dir} (materialize `v3_base` first)")


def grpo_result(reported: dict, url: str, out) -> dg.MaterializeResult:
    """Metadata and the improvement check of a GRPO stage, from its summary.json."""
    summary = json.loads((out / "summary.json").read_text())
    start, end = summary["heldout_pass@1_start_ci"], summary["heldout_pass@1_ci"]
    change = summary["heldout_pass@1_difference_ci"]
    return dg.MaterializeResult(
        metadata={**{k: v for k, v in reported.items() if not isinstance(v, (dict, list))},
                  "heldout_pass@1_start_ci": dg.MetadataValue.json(start), "heldout_pass@1_ci": dg.MetadataValue.json(end),
                  "heldout_pass@1_difference_ci": dg.MetadataValue.json(change),
                  "export": dg.MetadataValue.path(summary["export"]), "mlflow_run": dg.MetadataValue.url(url)},
        # the paired interval, the report card's "helped": not two unpaired intervals apart
        check_results=[dg.AssetCheckResult(
            check_name=IMPROVED, passed=change[0] > 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"start": summary["heldout_pass@1_start"], "end": summary["heldout_pass@1"],
                      "difference": summary["heldout_pass@1_difference"],
                      "difference_ci": dg.MetadataValue.json(change),
                      "start_ci": dg.MetadataValue.json(start), "end_ci": dg.MetadataValue.json(end)})],
    )


@dg.asset(
    group_name=GROUP, deps=[v3_base, reasoning_tasks], code_version="1",
    automation_condition=ON_CRON_IF_INPUTS_CHANGED,
    required_resource_keys={"profile", "mlflow_tracking", "launcher"}, kinds={"deepspeed", "pytorch", "mlflow"},
    check_specs=[dg.AssetCheckSpec(IMPROVED, asset="r1_zero",
                                   description=f"held-out pass@1 gain over the start model, {PAIRED}")],
)
def r1_zero(context: dg.AssetExecutionContext):
    """GRPO from v3_base with accuracy and format rewards (DeepSeek-R1-Zero); registered as seekflow-r1-zero."""
    model_dir, tasks_dir = data_dir("v3_base") / "export", data_dir("reasoning_tasks")
    reported, url, out = launch_training(
        context, "training.grpo", "r1_zero", {"model": model_dir, "tasks": tasks_dir}, "seekflow-r1-zero",
        lambda p: _check_tasks(p, tasks_dir, model_dir))
    return grpo_result(reported, url, out)


r1_zero_assets = [reasoning_tasks, r1_zero]
