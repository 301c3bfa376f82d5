"""The `evaluation` asset group: `eval_report`, the report card across every model.

Every model (v3_base, r1_zero, r1_cold, r1_reasoning_rl, r1_sft, r1, each student and the GRPO-
trained student) is evaluated on the same held-out tasks with the same settings (training/
evaluate.py through the shared cache: GRPO stages already measured their models). training/
report.py turns the results into a table, a chart and each stage's effect with a paired 95%
interval and a verdict, including "no measurable effect" where a stage did not help at this scale.
Written to $SEEKFLOW_HOME/report.md, to the asset's metadata and to MLflow.
"""

import shutil
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import mlflow

from assets.distillation import STUDENTS, distilled_students
from assets.launching import code_version, image_markdown
from assets.pretraining import v3_base
from assets.r1 import r1, r1_cold, r1_reasoning_rl, r1_sft
from assets.r1_zero import r1_zero, reasoning_tasks
from training import tracking
from training.settings import data_dir, seekflow_home

GROUP = "evaluation"
STAGES = {  # model -> (how it was made)
    "v3_base": "pretrained base (MLA, DeepSeekMoE, MTP)",
    "r1_zero": "GRPO from v3_base, accuracy + format rewards",
    "r1_cold": "SFT of v3_base on cold-start data",
    "r1_reasoning_rl": "GRPO from r1_cold, + language consistency",
    "r1_sft": "SFT of v3_base on rejection-sampled + general data",
    "r1": "final GRPO from r1_sft, all scenarios",
}


def model_exports() -> dict[str, tuple[str, Path]]:
    """name -> (stage description, export directory), students included."""
    models = {name: (desc, data_dir(name) / "export") for name, desc in STAGES.items()}
    students = STUDENTS.get_partition_keys()
    for s in students:
        models[f"student:{s}"] = (f"dense student {s}: SFT on r1's samples", data_dir("distilled_students") / s / "distilled" / "export")
    smallest = students[-1]
    models[f"student:{smallest}-grpo"] = (f"dense student {smallest}: GRPO directly, same step budget",
                                          data_dir("distilled_students") / smallest / "grpo" / "export")
    return models


def stage_pairs() -> list[tuple[str, str, str]]:
    students = STUDENTS.get_partition_keys()
    pairs = [("v3_base", "r1_zero", "R1-Zero: GRPO from the base"),
             ("v3_base", "r1_cold", "cold-start SFT"),
             ("r1_cold", "r1_reasoning_rl", "reasoning-oriented RL"),
             ("v3_base", "r1_sft", "rejection sampling + SFT from the base (2 epochs)"),
             ("r1_sft", "r1", "final RL over all scenarios"),
             ("v3_base", "r1", "the whole R1 recipe")]
    pairs += [("r1", f"student:{s}", f"distillation into {s} (teacher -> student)") for s in students]
    smallest = students[-1]
    pairs.append((f"student:{smallest}-grpo", f"student:{smallest}", "distillation vs GRPO at equal step budget"))
    return pairs


def model_parameters(export: Path) -> tuple[int, int]:
    """(total, activated) parameters of an export, from its config.json."""
    import json

    from training.model import count_parameters
    from training.model.hf import config_from_hf

    counts = count_parameters(config_from_hf(json.loads((export / "config.json").read_text())))
    return counts.total, counts.activated


@dg.asset(group_name=GROUP, code_version="1", required_resource_keys={"profile", "mlflow_tracking"},
          deps=[v3_base, r1_zero, r1_cold, r1_reasoning_rl, r1_sft, r1, distilled_students, reasoning_tasks],
          automation_condition=dg.AutomationCondition.eager(), kinds={"pytorch", "mlflow", "markdown"})
def eval_report(context: dg.AssetExecutionContext):
    """Every model on the held-out tasks: pass@1 with 95% intervals, cons@k, format, language,
    length; each stage's effect with a paired interval; report.md in SEEKFLOW_HOME."""
    from training.eval_cache import evaluate_cached
    from training.evaluate import EvalConfig
    from training.report import ModelEval, build_report

    p = context.resources.profile.load()
    tasks = data_dir("reasoning_tasks") / "tasks.parquet"
    cfg = EvalConfig(**asdict(p.evaluation))
    evals = []
    for name, (desc, export) in model_exports().items():
        if not (export / "config.json").is_file():
            context.log.warning(f"{name}: no export at {export}; listed as missing")
            evals.append(ModelEval(name=name, stage=desc, results=None, summary=None, parameters=None))
            continue
        summary, results = evaluate_cached(export, tasks, cfg)
        evals.append(ModelEval(name=name, stage=desc, results=results, summary=results.with_suffix(".summary.json"),
                               parameters=model_parameters(export)))
    out = data_dir("eval_report")
    report = build_report(evals, out, stage_pairs(), profile=p.name)
    shutil.copy2(out / "report.md", seekflow_home() / "report.md")
    chart = out / "pass_at_1.png"
    with context.resources.mlflow_tracking.asset_run(context, code_version(context)) as run:
        mlflow.log_params({f"evaluation.{k}": v for k, v in asdict(p.evaluation).items()})
        tracking.log_input_table("reasoning_tasks", tasks.parent)
        mlflow.log_artifacts(str(out), "report")
        for row in report["models"]:
            if row.get("pass@1") is not None:
                mlflow.log_metric(f"pass_at_1.{row['name'].replace(':', '.')}", row["pass@1"])
        url = tracking.run_url(run)
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md((out / "report.md").read_text().replace("](pass_at_1.png)", "](#)")),
        "chart": dg.MetadataValue.md(image_markdown(chart)) if chart.is_file() else "no chart",
        "path": dg.MetadataValue.path(str(seekflow_home() / "report.md")),
        "models": len([e for e in evals if e.results is not None]),
        "missing": dg.MetadataValue.json([e.name for e in evals if e.results is None]),
        "mlflow_run": dg.MetadataValue.url(url),
    })


evaluation_assets = [eval_report]
