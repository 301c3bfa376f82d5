"""The `pretraining` asset group: `pretraining_shards` + `tokenizer` -> `v3_base`.

The asset orchestrates and records; the training runs in its own process (training/pretrain.py on
DeepSpeed), started by the `launcher` resource (pipelines/launcher.py: local, Slurm or Kubernetes)
through Dagster Pipes. Before launching it checks the inputs (shards present, tokenizer vocabulary
within the model's, batch divisible across ranks), so a bad field fails in seconds, not after a
queue wait. A failed or killed process fails the asset with its log tail; the next materialization
resumes from the newest complete checkpoint in $SEEKFLOW_HOME/data/v3_base/checkpoints.

Automation: training is expensive, so `v3_base` is not eager. It is considered on a cron schedule
and requested only when one of its inputs was rematerialized since it last ran: a corpus change
rebuilds the shards right away (eager), and the model at the next tick.
"""

import json
from pathlib import Path

import dagster as dg

from assets.corpus import pretraining_shards, tokenizer
from assets.launching import image_markdown, launch_training
from training.settings import data_dir

GROUP = "pretraining"
TRAINING_CRON = "0 3 * * *"  # nightly; change it here or wrap the asset in your own schedule

# request at a cron tick, and only when an input was updated since this asset last ran
ON_CRON_IF_INPUTS_CHANGED = (
    dg.AutomationCondition.cron_tick_passed(TRAINING_CRON).since_last_handled()
    & dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.any_deps_in_progress()
).with_label(f"on cron {TRAINING_CRON!r} if inputs changed")

BELOW_UNIGRAM = "validation_loss_below_unigram_entropy"
LOADS_IN_TRANSFORMERS = "export_loads_in_transformers"


def transformers_generates(export: Path, prompt: str = "def ") -> tuple[bool, str]:
    """Load the export with transformers' Auto classes and generate a few tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0][ids.shape[1]:])
    return out.shape[1] > ids.shape[1], f"{type(model).__name__}: {prompt!r} -> {text!r}"


@dg.asset(
    group_name=GROUP, deps=[pretraining_shards, tokenizer], code_version="1",
    automation_condition=ON_CRON_IF_INPUTS_CHANGED,
    required_resource_keys={"profile", "mlflow_tracking", "launcher"},
    check_specs=[
        dg.AssetCheckSpec(BELOW_UNIGRAM, asset="v3_base",
                          description="validation loss is below the unigram entropy of the validation shard"),
        dg.AssetCheckSpec(LOADS_IN_TRANSFORMERS, asset="v3_base",
                          description="the Hugging Face export loads in transformers and generates text"),
    ],
    kinds={"deepspeed", "pytorch", "mlflow"},
)
def v3_base(context: dg.AssetExecutionContext):
    """DeepSeek-V3 (MLA, DeepSeekMoE with aux-loss-free balancing, MTP) pretrained on DeepSpeed.
    Output: checkpoints/ (DeepSpeed, resumable) and export/ (Hugging Face DeepseekV3ForCausalLM)."""
    from training.pretrain import check_inputs

    shards, tok = data_dir("pretraining_shards"), data_dir("tokenizer")
    reported, url, out = launch_training(
        context, "training.pretrain", "v3_base", {"pretraining_shards": shards, "tokenizer": tok}, "seekflow-v3-base",
        lambda p: check_inputs(p, shards, tok, p.launch.world_size, weights_wanted=True))
    summary = json.loads((out / "summary.json").read_text())
    val, unigram = summary["validation_loss"], summary["unigram_entropy"]
    loads, sample = transformers_generates(Path(summary["export"]))
    curve = Path(summary["loss_curve"])
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in reported.items() if not isinstance(v, (dict, list))},
            "checkpoint": dg.MetadataValue.path(summary["checkpoint"]),
            "export": dg.MetadataValue.path(summary["export"]),
            "mlflow_run": dg.MetadataValue.url(url),
            "loss_curve": dg.MetadataValue.md(image_markdown(curve)),
        },
        check_results=[
            dg.AssetCheckResult(check_name=BELOW_UNIGRAM, passed=val < unigram,
                                metadata={"validation_loss": val, "unigram_entropy": unigram}),
            dg.AssetCheckResult(check_name=LOADS_IN_TRANSFORMERS, passed=loads, metadata={"sample": sample}),
        ],
    )


pretraining_assets = [v3_base]
