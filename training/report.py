"""The report card: every model on the held-out tasks, and what each stage of the lifecycle did.

    report = build_report(models, out_dir, stage_pairs, profile="tiny")

`models` are ModelEval entries pointing at training/evaluate.py's outputs (a results Parquet with
one row per sample, and its summary JSON). Written to `out_dir`:
- `report.md`: title, date, profile, the models table, pass@1 per family, each stage's effect with
  its interval and a verdict, the chart, and how the intervals were computed;
- `report.json`: the same, as data (also returned by build_report);
- `report_models.parquet` and `report_effects.parquet`: the two tables;
- `pass_at_1.png`: pass@1 per model with its interval, and format adherence.

Every metric of a model is recomputed from its results Parquet by `training.evaluate.report`, the
code that wrote the summary, so the card cannot drift from the evaluation. A stage's effect is the
PAIRED difference in pass@1 between two models over the held-out tasks both answered: per task,
the after model's mean accuracy minus the before model's, then a t interval over tasks. Pairing
removes what the two models share (how hard each task is), so it usually resolves a smaller
effect than two separate intervals would. The verdict says "helped" when the whole interval is above 0, "hurt"
when below, and "no measurable effect at this scale" otherwise. NOTE: every verdict is printed,
whatever it says; a model that was not evaluated is listed as missing, and so is every effect that
needs it, with the reason.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from training.evaluate import report as evaluation_report
from training.evaluate import summary_path

HELPED, HURT, NO_EFFECT = "helped", "hurt", "no measurable effect at this scale"
RESULT_COLUMNS = ["task_id", "family", "difficulty", "sample", "answer", "accuracy", "format", "language",
                  "length", "stopped"]


@dataclass(frozen=True)
class ModelEval:
    name: str  # e.g. "r1_zero"; stage_pairs refer to models by this name
    stage: str  # what made it, e.g. "GRPO from v3_base, rule rewards"
    results: Path | None  # training/evaluate.py's results Parquet; None: the stage was not materialized
    summary: Path | None = None  # its summary JSON (settings, tasks file); default: beside the results
    parameters: tuple[int, int] | Any = None  # (total, activated), or count_parameters' ParamCounts

    @property
    def total_and_activated(self) -> tuple[int | None, int | None]:
        p = self.parameters
        if p is None:
            return None, None
        return (p.total, p.activated) if hasattr(p, "activated") else (int(p[0]), int(p[1]))


@dataclass(frozen=True)
class PairedDifference:
    """after - before, per task, averaged over the n tasks both models answered."""

    tasks: int
    before: float  # mean over the paired tasks
    after: float
    difference: float
    low: float
    high: float
    method: str  # "t" | "no spread: exact bound" | "one task"
    only_before: int = 0  # tasks answered by one model only (left out of the pairing)
    only_after: int = 0


def verdict(low: float, high: float) -> str:
    return HELPED if low > 0 else HURT if high < 0 else NO_EFFECT


def paired_difference(before: Mapping[str, float], after: Mapping[str, float],
                      confidence: float = 0.95) -> PairedDifference:
    """The mean per-task difference after - before with a t interval over the shared tasks.

    `before` and `after` map task id -> that task's mean score in [0, 1]. The interval is
    d +- t_{1-a/2, n-1} * sd(d_i) / sqrt(n), clipped to [-1, 1].
    NOTE: when every task moves by the same c (identical models give c = 0 on every task) the
    spread is 0 and a t interval collapses to a point, claiming certainty that n tasks cannot
    give. Instead: with 0 of n tasks departing from c, the share of tasks that could depart is at
    most u = 1 - (a/2)^(1/n) (Clopper-Pearson), and each could move the mean as far as -1 or +1,
    so the interval is [c - u(1 + c), c + u(1 - c)]. One task gives [-1, 1].
    """
    from scipy.stats import t as student_t

    shared = sorted(set(before) & set(after))
    n = len(shared)
    if n == 0:
        raise ValueError(f"no task in common: {len(before)} tasks before, {len(after)} after; "
                         "evaluate both models on the same task table and split")
    d = [after[t] - before[t] for t in shared]
    mean_b, mean_a = sum(before[t] for t in shared) / n, sum(after[t] for t in shared) / n
    c = sum(d) / n
    alpha = 1 - confidence
    if n == 1:
        low, high, method = -1.0, 1.0, "one task"
    elif max(d) - min(d) <= 1e-12:
        u = 1 - (alpha / 2) ** (1 / n)
        low, high, method = c - u * (1 + c), c + u * (1 - c), "no spread: exact bound"
    else:
        sd = math.sqrt(sum((x - c) ** 2 for x in d) / (n - 1))
        half = float(student_t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
        low, high, method = c - half, c + half, "t"
    return PairedDifference(tasks=n, before=mean_b, after=mean_a, difference=c, low=max(-1.0, low),
                            high=min(1.0, high), method=method, only_before=len(set(before) - set(after)),
                            only_after=len(set(after) - set(before)))


# ---------------------------------------------------------------------------------------------
# loading one model's evaluation


@dataclass
class _Loaded:
    summary: dict  # training.evaluate.report's shape, recomputed from the rows
    per_task: dict[str, dict[str, float]]  # component -> task id -> mean over the task's samples
    k: int
    settings: dict  # the evaluation's config and tasks file, from the summary JSON when present


def per_task_means(rows: list[dict], column: str) -> dict[str, float]:
    """task id -> the mean of `column` over its samples (its pass@1 for "accuracy"), from the rows of
    training/evaluate.py's results table: what paired_difference compares between two models."""
    by_task: dict[str, list[float]] = {}
    for r in rows:
        by_task.setdefault(r["task_id"], []).append(float(r[column]))
    return {t: sum(v) / len(v) for t, v in by_task.items()}


def _load(m: ModelEval, confidence: float) -> _Loaded | str:
    """The evaluation of one model, or why there is none."""
    if m.results is None:
        return "no results: the stage was not materialized"
    if not Path(m.results).is_file():
        return f"no results file at {m.results}"
    table = pq.read_table(m.results)
    absent = sorted(set(RESULT_COLUMNS) - set(table.column_names))
    if absent:
        raise ValueError(f"{m.results} (model {m.name!r}) lacks columns {absent}; expected training/evaluate.py's "
                         f"results table with {RESULT_COLUMNS}")
    rows = table.select(RESULT_COLUMNS).to_pylist()
    if not rows:
        return f"{m.results} has no rows"
    per_task = {c: per_task_means(rows, c) for c in ("accuracy", "format")}
    k = max(Counter(r["task_id"] for r in rows).values())
    summary_file = Path(m.summary) if m.summary is not None else summary_path(Path(m.results))
    settings = {}
    if summary_file.is_file():
        saved = json.loads(summary_file.read_text())
        settings = {"config": saved.get("config", {}), "tasks_file": saved.get("tasks_file")}
        k = saved.get("config", {}).get("k", k)
    return _Loaded(summary=evaluation_report(rows, k, confidence),
                   per_task=per_task,
                   k=k, settings=settings)


def _model_row(m: ModelEval, loaded: _Loaded | str, families: list[str]) -> dict[str, Any]:
    """One row of the models table; every row has every column (Parquet infers from the first)."""
    total, activated = m.total_and_activated
    row: dict[str, Any] = {"name": m.name, "stage": m.stage, "status": "evaluated", "missing_reason": None,
                           "total_params": total, "activated_params": activated}
    metrics = ["tasks", "samples", "k", "pass@1", "pass@1_low", "pass@1_high", "cons@k", "format", "language",
               "mean_length", "stopped"]
    row.update(dict.fromkeys(metrics + [f"pass@1:{f}" for f in families]))
    if isinstance(loaded, str):
        row.update(status="missing", missing_reason=loaded)
        return row
    o = loaded.summary["overall"]
    row.update({"tasks": o["tasks"], "samples": o["samples"], "k": loaded.k, "pass@1": o["pass@1"],
                "pass@1_low": o["pass@1_ci"][0], "pass@1_high": o["pass@1_ci"][1],
                "cons@k": o[f"cons@{loaded.k}"], "format": o["format"], "language": o["language"],
                "mean_length": o["mean_length"], "stopped": o["stopped"]})
    for f, s in loaded.summary["by_family"].items():
        row[f"pass@1:{f}"] = s["pass@1"]
    return row


def _effect_row(before: str, after: str, label: str, loaded: Mapping[str, _Loaded | str],
                confidence: float) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": label, "before": before, "after": after, "status": "measured", "reason": None,
                           **dict.fromkeys(["tasks", "pass@1_before", "pass@1_after", "difference", "low", "high",
                                            "method", "only_before", "only_after", "format_difference",
                                            "format_low", "format_high", "verdict"])}
    reasons = [f"{name} is missing ({loaded[name] if name in loaded else 'not among the evaluated models'})"
               for name in (before, after) if not isinstance(loaded.get(name), _Loaded)]
    if not reasons:
        b, a = loaded[before], loaded[after]
        if not set(b.per_task["accuracy"]) & set(a.per_task["accuracy"]):
            reasons = [f"{before} and {after} share no held-out task; evaluate both on the same task table"]
    if reasons:
        row.update(status="not measured", reason="; ".join(reasons), verdict="not measured")
        row["sentence"] = f"{label}, {before} -> {after}: not measured: {row['reason']}."
        return row
    acc = paired_difference(b.per_task["accuracy"], a.per_task["accuracy"], confidence)
    fmt = paired_difference(b.per_task["format"], a.per_task["format"], confidence)
    row.update(tasks=acc.tasks, **{"pass@1_before": acc.before, "pass@1_after": acc.after}, difference=acc.difference,
               low=acc.low, high=acc.high, method=acc.method, only_before=acc.only_before, only_after=acc.only_after,
               format_difference=fmt.difference, format_low=fmt.low, format_high=fmt.high,
               verdict=verdict(acc.low, acc.high))
    why = {HELPED: "the whole interval is above 0", HURT: "the whole interval is below 0",
           NO_EFFECT: "the interval includes 0: this run cannot tell the change from noise"}[row["verdict"]]
    unpaired = (f"; {acc.only_before + acc.only_after} task(s) answered by one model only are left out"
                if acc.only_before or acc.only_after else "")
    row["sentence"] = (
        f"{label}, {before} -> {after}: pass@1 {acc.before:.3f} -> {acc.after:.3f}, difference "
        f"{acc.difference:+.3f} ({confidence:.0%} CI {acc.low:+.3f} to {acc.high:+.3f}, paired over {acc.tasks} "
        f"held-out tasks{unpaired}): **{row['verdict']}** ({why}). Format adherence {fmt.difference:+.3f} "
        f"({fmt.low:+.3f} to {fmt.high:+.3f}).")
    return row


# ---------------------------------------------------------------------------------------------
# outputs


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _cell(text: Any) -> str:
    """Text for a markdown table cell: a '|' would end the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _markdown_tables(rows: list[dict], families: list[str]) -> tuple[str, str]:
    """(models table, pass@1 per family table)."""
    ks = sorted({r["k"] for r in rows if r["k"] is not None})
    cons = f"cons@{ks[0]}" if len(ks) == 1 else "cons@k"
    lines = [f"| model | stage | params (total / activated) | tasks | pass@1 [95% CI] | {cons} | format | "
             "language | mean length |", "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        params = f"{_params(r['total_params'])} / {_params(r['activated_params'])}"
        if r["status"] == "missing":
            lines.append(f"| {_cell(r['name'])} | {_cell(r['stage'])} | {params} | - | "
                         f"MISSING: {_cell(r['missing_reason'])} | - | - | - | - |")
            continue
        lines.append(f"| {_cell(r['name'])} | {_cell(r['stage'])} | {params} | {r['tasks']} | {r['pass@1']:.3f} "
                     f"[{r['pass@1_low']:.3f}, {r['pass@1_high']:.3f}] | {r['cons@k']:.3f} | {r['format']:.3f} | "
                     f"{r['language']:.3f} | {r['mean_length']:.1f} |")
    if not families:
        return "\n".join(lines), "(no model was evaluated)"
    fam = ["| model | " + " | ".join(families) + " |", "| --- |" + " ---: |" * len(families)]
    for r in rows:
        fam.append(f"| {_cell(r['name'])} | " + " | ".join(_num(r[f"pass@1:{f}"]) for f in families) + " |")
    return "\n".join(lines), "\n".join(fam)


def _effects_table(effects: list[dict], confidence: float) -> str:
    lines = [f"| stage | before -> after | tasks | pass@1 before -> after | difference [{confidence:.0%} CI] | "
             "format difference | verdict |", "| --- | --- | ---: | --- | --- | --- | --- |"]
    for e in effects:
        pair = _cell(f"{e['before']} -> {e['after']}")
        if e["status"] != "measured":
            lines.append(f"| {_cell(e['stage'])} | {pair} | - | - | - | - | not measured: {_cell(e['reason'])} |")
            continue
        lines.append(f"| {_cell(e['stage'])} | {pair} | {e['tasks']} | {e['pass@1_before']:.3f} -> "
                     f"{e['pass@1_after']:.3f} | {e['difference']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}] | "
                     f"{e['format_difference']:+.3f} [{e['format_low']:+.3f}, {e['format_high']:+.3f}] | "
                     f"{e['verdict']} |")
    return "\n".join(lines)


def _chart(rows: list[dict], path: Path, confidence: float) -> None:
    """pass@1 with its interval (top) and format adherence (bottom) per model; missing models keep
    their slot, marked, so the chart does not hide them either."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg via savefig

    n = len(rows)
    fig = Figure(figsize=(max(6.0, 0.9 * n + 2), 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    present = [i for i, r in enumerate(rows) if r["status"] == "evaluated"]
    mean = [rows[i]["pass@1"] for i in present]
    err = [[rows[i]["pass@1"] - rows[i]["pass@1_low"] for i in present],
           [rows[i]["pass@1_high"] - rows[i]["pass@1"] for i in present]]
    top.bar(present, mean, yerr=err, capsize=4, color="#4C72B0")
    ceiling = max([rows[i]["pass@1_high"] for i in present] + [0.05])
    top.set_ylim(0, min(1.0, ceiling * 1.15))
    top.set_ylabel(f"pass@1 ({confidence:.0%} CI)")
    top.set_title("Held-out pass@1 per model")
    bottom.bar(present, [rows[i]["format"] for i in present], color="#55A868")
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("format adherence")
    for i, r in enumerate(rows):
        if r["status"] != "evaluated":
            for ax in (top, bottom):
                ax.text(i, 0, "missing", rotation=90, ha="center", va="bottom", color="#C44E52")
    bottom.set_xticks(range(n), [r["name"] for r in rows], rotation=30, ha="right")
    fig.savefig(path, dpi=110)


METHOD_NOTE = """\
A **task** is one held-out problem of the `reasoning_tasks` table (split `{split}`): never trained on,
split from the training tasks by template instance and decontaminated against the pretraining corpus.
Each model answered each task k = {k} times ({sampling}); a task's score is the mean accuracy of its k
samples, and pass@1 is the mean of those scores over tasks.

- **A model's interval** is a {conf} t interval over tasks (tasks are the unit; the k samples only
  sharpen each task's score). When every task scores 0 (or 1) the exact Clopper-Pearson bound is used.
- **A stage's effect** is paired: both models answered the same tasks, so the effect is the mean over
  tasks of (after - before) with a {conf} t interval over those per-task differences. Pairing removes
  the variation in task difficulty both models share. When every task moves by exactly the same amount
  (identical models: 0 everywhere) the t interval has no width; then the share of tasks that could move
  differently is bounded by Clopper-Pearson for 0 of n, each moving at most to -1 or +1.
- **Verdicts**: "{helped}" when the whole interval is above 0, "{hurt}" when below, "{none}" when it
  includes 0. "{none}" says this run (its model sizes, training budget and number of held-out tasks)
  cannot resolve the effect from noise, not that the stage has none at a larger scale. On the tiny
  profile, with models of about a million parameters trained for minutes, it is the expected reading
  for several stages.
- cons@k counts a task when the majority answer of its k samples is correct (answers vote as strings).
  Format adherence and language consistency are means of those rule rewards over all samples; length is
  in generated tokens.
"""


def build_report(models: Sequence[ModelEval], out_dir: Path, stage_pairs: Sequence[tuple[str, str, str]], *,
                 profile: str = "", confidence: float = 0.95, title: str = "Seekflow report card",
                 generated: datetime | None = None) -> dict[str, Any]:
    """Write report.md, report.json, the two Parquet tables and the chart to out_dir; return the JSON."""
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"model name(s) {dup} appear more than once; each ModelEval needs its own name")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generated = generated or datetime.now(timezone.utc)
    loaded = {m.name: _load(m, confidence) for m in models}
    evaluated = {n: ld for n, ld in loaded.items() if isinstance(ld, _Loaded)}
    families = sorted({f for ld in evaluated.values() for f in ld.summary["by_family"]})
    rows = [_model_row(m, loaded[m.name], families) for m in models]
    effects = [_effect_row(b, a, label, loaded, confidence) for b, a, label in stage_pairs]
    missing = [{"name": r["name"], "reason": r["missing_reason"]} for r in rows if r["status"] == "missing"]

    paths = {"markdown": out_dir / "report.md", "json": out_dir / "report.json", "chart": out_dir / "pass_at_1.png",
             "models_table": out_dir / "report_models.parquet", "effects_table": out_dir / "report_effects.parquet"}
    pq.write_table(pa.Table.from_pylist(rows), paths["models_table"])
    pq.write_table(pa.Table.from_pylist(effects), paths["effects_table"])
    _chart(rows, paths["chart"], confidence)

    models_md, families_md = _markdown_tables(rows, families)
    effects_md = _effects_table(effects, confidence)
    settings = next((ld.settings for ld in evaluated.values() if ld.settings), {})
    cfg = settings.get("config", {})
    sampling = (f"temperature {cfg['temperature']}, top-p {cfg['top_p']}, at most {cfg['max_new_tokens']} new tokens"
                if {"temperature", "top_p", "max_new_tokens"} <= set(cfg) else "sampling settings not recorded")
    ks = sorted({ld.k for ld in evaluated.values()})
    facts = [f"Generated {generated.isoformat(timespec='seconds')}", f"profile `{profile}`" if profile else "",
             f"{len(evaluated)} of {len(models)} models evaluated", f"{confidence:.0%} intervals",
             f"tasks `{settings['tasks_file']}`" if settings.get("tasks_file") else ""]
    md = [f"# {title}", "", " · ".join(f for f in facts if f), ""]
    task_files = sorted({str(ld.settings.get("tasks_file")) for ld in evaluated.values() if ld.settings})
    if len(task_files) > 1:  # effects still pair only the task ids both models answered
        md += [f"**NOTE: the models were evaluated on different task tables: {', '.join(task_files)}.**", ""]
    md += ["## Models", "", models_md, ""]
    if missing:
        md += ["**Missing** (not evaluated, so absent from every effect that needs them):", ""]
        md += [f"- `{x['name']}`: {x['reason']}" for x in missing] + [""]
    md += ["## pass@1 per task family", "", families_md, "", "## What each stage did", "", effects_md, ""]
    md += [f"- {e['sentence']}" for e in effects] + [""]
    md += ["## Chart", "", f"![pass@1 with {confidence:.0%} intervals and format adherence per model]"
           f"({paths['chart'].name})", "", "## How the numbers were computed", "",
           METHOD_NOTE.format(split=cfg.get("split", "heldout"), k=", ".join(map(str, ks)) or "?",
                              sampling=sampling, conf=f"{confidence:.0%}", helped=HELPED, hurt=HURT, none=NO_EFFECT)]
    paths["markdown"].write_text("\n".join(md))

    result = {"title": title, "generated": generated.isoformat(timespec="seconds"), "profile": profile,
              "confidence": confidence, "evaluation": settings, "families": families, "models": rows,
              "missing": missing, "effects": effects,
              "verdicts": {e["stage"]: e["verdict"] for e in effects},
              "models_markdown": models_md, "effects_markdown": effects_md,
              "paths": {k: str(v) for k, v in paths.items()}}
    paths["json"].write_text(json.dumps(result, indent=2))
    return result

