"""The `r1` asset group: DeepSeek-R1's four stages after R1-Zero.

  r1_zero samples + worked solutions -> cold_start_sft -> r1_cold (SFT of v3_base)
  r1_cold -> r1_reasoning_rl (GRPO: accuracy, format, language consistency)
  r1_reasoning_rl -> rejection_sampled_sft (correct + readable samples, ~3:1 with general examples)
  v3_base + rejection_sampled_sft -> r1_sft (SFT from the base, 2 epochs) -> r1 (GRPO, all scenarios)

Data assets build their tables in-process (training/sft_data.py: generation on the latent cache,
rule rewards, readability filters; every rejected sample kept with its reason). Training assets
launch training/sft.py or training/grpo.py through the launcher, like v3_base.
"""

import json

import dagster as dg
import mlflow

from assets.corpus import deduplicated_corpus
from assets.launching import code_version, launch_training
from assets.pretraining import ON_CRON_IF_INPUTS_CHANGED, v3_base
from assets.r1_zero import PAIRED, grpo_result, r1_zero, reasoning_tasks
from training import tracking
from training.settings import data_dir

GROUP = "r1"
TRAINING = dict(automation_condition=ON_CRON_IF_INPUTS_CHANGED, kinds={"deepspeed", "pytorch", "mlflow"},
                required_resource_keys={"profile", "mlflow_tracking", "launcher"})
DATA = dict(automation_condition=ON_CRON_IF_INPUTS_CHANGED, kinds={"parquet", "pytorch"},
            required_resource_keys={"profile", "mlflow_tracking"})


def _export(asset: str):
    return data_dir(asset) / "export"


def _require(*paths) -> None:
    for path in paths:
        if not path.exists():
            raise ValueError(f"{path} is missing (materialize `{path.parent.name}` first)")


def record_sft_data(context, summary: dict, out, params: dict, inputs: dict) -> dg.MaterializeResult:
    """Metadata and MLflow run of an SFT data asset (counts per source, acceptance, mix)."""
    with context.resources.mlflow_tracking.asset_run(context, code_version(context)) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for name, folder in inputs.items():
            tracking.log_input_table(name, folder)
        mlflow.log_dict(summary, "summary.json")
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        url = tracking.run_url(run)
    return dg.MaterializeResult(metadata={
        **{k: (dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v) for k, v in summary.items()},
        "path": dg.MetadataValue.path(str(out / "sft.parquet")), "mlflow_run": dg.MetadataValue.url(url)})


@dg.asset(group_name=GROUP, deps=[r1_zero, reasoning_tasks], code_version="1", **DATA)
def cold_start_sft(context: dg.AssetExecutionContext):
    """Long chain-of-thought examples: correct and readable r1_zero samples plus the task
    generators' worked solutions; counts per source and acceptance rates in the metadata."""
    from training.sft_data import build_cold_start

    p = context.resources.profile.load()
    model, tasks, out = _export("r1_zero"), data_dir("reasoning_tasks"), data_dir("cold_start_sft")
    summary = build_cold_start(model, tasks / "tasks.parquet", p.cold_start, out)
    return record_sft_data(context, summary, out, {f"cold_start.{k}": v for k, v in vars(p.cold_start).items()},
                           {"r1_zero": model, "reasoning_tasks": tasks})


@dg.asset(group_name=GROUP, deps=[v3_base, cold_start_sft], code_version="1", **TRAINING)
def r1_cold(context: dg.AssetExecutionContext):
    """SFT of v3_base on cold_start_sft (loss on assistant tokens only); registered as seekflow-r1-cold."""
    return sft_from_base(context, "r1_cold", "cold_start_sft")


def sft_from_base(context, stage: str, data_asset: str) -> dg.MaterializeResult:
    """training/sft.py from v3_base's export on `data_asset`'s table; registered as seekflow-<stage>."""
    model, data = _export("v3_base"), data_dir(data_asset)
    reported, url, out = launch_training(context, "training.sft", stage, {"model": model, "data": data},
                                         f"seekflow-{stage.replace('_', '-')}",
                                         lambda p: _require(model / "config.json", data / "sft.parquet"))
    summary = json.loads((out / "summary.json").read_text())
    return dg.MaterializeResult(metadata={
        **{k: v for k, v in reported.items() if not isinstance(v, (dict, list))},
        "export": dg.MetadataValue.path(summary["export"]), "mlflow_run": dg.MetadataValue.url(url)})


def grpo_from(context, stage: str, model_asset: str, inputs: dict, required: tuple = ()) -> dg.MaterializeResult:
    """training/grpo.py from `model_asset`'s export on the reasoning tasks (plus `inputs`);
    registered as seekflow-<stage>."""
    model = _export(model_asset)
    reported, url, out = launch_training(
        context, "training.grpo", stage, {"model": model, "tasks": data_dir("reasoning_tasks"), **inputs},
        f"seekflow-{stage.replace('_', '-')}", lambda p: _require(model / "config.json", *required))
    return grpo_result(reported, url, out)


@dg.asset(group_name=GROUP, deps=[r1_cold, reasoning_tasks], code_version="1", **TRAINING,
          check_specs=[dg.AssetCheckSpec("heldout_pass_at_1_improved", asset="r1_reasoning_rl",
                                         description=f"held-out pass@1 gain over r1_cold, {PAIRED}")])
def r1_reasoning_rl(context: dg.AssetExecutionContext):
    """GRPO from r1_cold with accuracy, format and language-consistency rewards."""
    return grpo_from(context, "r1_reasoning_rl", "r1_cold", {})


@dg.asset(group_name=GROUP, deps=[r1_reasoning_rl, reasoning_tasks, deduplicated_corpus], code_version="1", **DATA)
def rejection_sampled_sft(context: dg.AssetExecutionContext):
    """k samples per train prompt from r1_reasoning_rl, only correct and readable ones kept, plus
    general (non-reasoning) examples from the corpus at about 3:1; acceptance per family, the mix."""
    from training.sft_data import build_rejection_sampled

    p = context.resources.profile.load()
    model, tasks, corpus = _export("r1_reasoning_rl"), data_dir("reasoning_tasks"), data_dir("deduplicated_corpus")
    out = data_dir("rejection_sampled_sft")
    summary = build_rejection_sampled(model, tasks / "tasks.parquet", corpus, p.rejection, out)
    return record_sft_data(context, summary, out, {f"rejection.{k}": v for k, v in vars(p.rejection).items()},
                           {"r1_reasoning_rl": model, "reasoning_tasks": tasks, "deduplicated_corpus": corpus / "documents"})


@dg.asset(group_name=GROUP, deps=[v3_base, rejection_sampled_sft], code_version="1", **TRAINING)
def r1_sft(context: dg.AssetExecutionContext):
    """SFT from v3_base (not from the RL model) on rejection_sampled_sft, 2 epochs; seekflow-r1-sft."""
    return sft_from_base(context, "r1_sft", "rejection_sampled_sft")


@dg.asset(group_name=GROUP, deps=[r1_sft, reasoning_tasks, rejection_sampled_sft], code_version="1", **TRAINING,
          check_specs=[dg.AssetCheckSpec("heldout_pass_at_1_improved", asset="r1",
                                         description=f"held-out pass@1 gain over r1_sft, {PAIRED}")])
def r1(context: dg.AssetExecutionContext):
    """Final GRPO over all scenarios: rule rewards for reasoning prompts, and for general prompts
    the documented rule proxy (token F1 to the reference, training/rewards/general.py); seekflow-r1."""
    general = data_dir("rejection_sampled_sft")
    return grpo_from(context, "r1", "r1_sft", {"general": general}, (general / "sft.parquet",))


r1_assets = [cold_start_sft, r1_cold, r1_reasoning_rl, rejection_sampled_sft, r1_sft, r1]
