"""The report card: paired stage effects by hand, verdicts, and every model and effect in report.md."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.model import ModelConfig, count_parameters
from training.report import HELPED, HURT, NO_EFFECT, ModelEval, build_report, paired_difference


def write_results(path, per_task: dict[str, list[float]], fmt: float = 1.0):
    """training/evaluate.py's results table: one row per sample; family from the task id's prefix."""
    rows = [{"task_id": t, "family": t.split("-")[0], "kind": "math", "difficulty": 1, "sample": s,
             "response": "", "answer": "1", "gold": "1", "accuracy": acc, "format": fmt, "language": 1.0,
             "length": 10, "stopped": True}
            for t, accs in per_task.items() for s, acc in enumerate(accs)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_paired_difference_t_interval_by_hand():
    # d = [0.5, 0, 0.5, 0]: mean 0.25, sd = sqrt(4 x 0.0625 / 3) = 0.288675, se = 0.144338,
    # t(0.975, 3) = 3.182446: half-width 0.459347
    before = {"a": 0.0, "b": 0.5, "c": 0.5, "d": 1.0}
    after = {"a": 0.5, "b": 0.5, "c": 1.0, "d": 1.0}
    p = paired_difference(before, after)
    assert (p.tasks, p.before, p.after, p.difference, p.method) == (4, 0.5, 0.75, 0.25, "t")
    assert p.low == pytest.approx(-0.209347, abs=1e-6) and p.high == pytest.approx(0.709347, abs=1e-6)


def test_identical_models_give_zero_with_a_bounded_interval_not_a_point():
    scores = {f"t{i}": (i % 5) / 4 for i in range(10)}
    p = paired_difference(scores, dict(scores))
    # every difference is 0: the t interval would be [0, 0]; the bound is 1 - 0.025 ** (1 / 10)
    assert p.difference == 0.0 and p.method == "no spread: exact bound"
    assert (p.low, p.high) == pytest.approx((-0.308497, 0.308497), abs=1e-6)
    # every task 0 -> 1: at most u of tasks could fall as far as -1
    up = paired_difference(dict.fromkeys(scores, 0.0), dict.fromkeys(scores, 1.0))
    assert (up.low, up.high) == pytest.approx((1 - 2 * 0.308497, 1.0), abs=1e-6)
    one = paired_difference({"a": 0.0}, {"a": 1.0})
    assert (one.low, one.high, one.method) == (-1.0, 1.0, "one task")
    with pytest.raises(ValueError, match="no task in common"):
        paired_difference({"a": 0.0}, {"b": 1.0})


def test_pairing_resolves_an_effect_that_an_unpaired_comparison_cannot():
    from scipy.stats import ttest_ind

    rng = random.Random(0)
    # tasks of very different difficulty; the after model gains 0.25 on about a third of them
    before = {f"t{i}": rng.choice([0.0, 0.25, 0.5, 0.75]) for i in range(30)}
    after = {t: min(1.0, v + rng.choice([0.25, 0.0, 0.0])) for t, v in before.items()}
    p = paired_difference(before, after)
    assert p.low > 0 and paired_difference(after, before).high < 0
    unpaired = ttest_ind(list(after.values()), list(before.values())).confidence_interval(0.95)
    assert unpaired.low < 0 < unpaired.high  # two independent samples: task difficulty swamps the gain


@pytest.fixture
def lifecycle(tmp_path):
    """Hand-made evaluations: r1 clearly better than base, r1_zero identical to base, a student
    worse than r1, r1_cold never materialized."""
    rng = random.Random(1)
    tasks = [f"{fam}-{i}" for fam in ("arithmetic", "countdown") for i in range(15)]
    base = {t: [float(rng.random() < 0.1) for _ in range(4)] for t in tasks}
    strong = {t: [float(rng.random() < 0.8) for _ in range(4)] for t in tasks}
    weak = {t: [0.0, 0.0, 0.0, float(rng.random() < 0.2)] for t in tasks}
    d = tmp_path / "eval"
    student = ModelConfig(n_routed_experts=0, num_nextn_predict_layers=0)
    models = [
        ModelEval("v3_base", "pretrained base", write_results(d / "base.parquet", base, fmt=0.2), None,
                  (2_661_888, 1_252_992)),
        ModelEval("r1_zero", "GRPO from v3_base", write_results(d / "zero.parquet", base, fmt=0.9)),
        ModelEval("r1_cold", "cold-start SFT of v3_base", None),
        ModelEval("r1", "final RL", write_results(d / "r1.parquet", strong)),
        ModelEval("dense-half", "distilled from r1", write_results(d / "student.parquet", weak), None,
                  count_parameters(student)),
    ]
    pairs = [("v3_base", "r1_zero", "R1-Zero GRPO"), ("v3_base", "r1_cold", "cold-start SFT"),
             ("v3_base", "r1", "the whole R1 recipe"), ("r1", "dense-half", "distillation"),
             ("r1_cold", "r1_reasoning_rl", "reasoning RL")]
    return models, pairs, tmp_path / "report"


def test_verdicts_follow_the_intervals(lifecycle):
    models, pairs, out = lifecycle
    report = build_report(models, out, pairs, profile="tiny")
    assert report["verdicts"] == {"R1-Zero GRPO": NO_EFFECT, "cold-start SFT": "not measured",
                                  "the whole R1 recipe": HELPED, "distillation": HURT, "reasoning RL": "not measured"}
    zero = report["effects"][0]
    assert zero["difference"] == 0.0 and zero["low"] < 0 < zero["high"]
    assert zero["format_difference"] == pytest.approx(0.7) and zero["format_low"] > 0  # format still moved
    whole = report["effects"][2]
    assert whole["tasks"] == 30 and whole["low"] > 0
    assert "r1_reasoning_rl is missing (not among the evaluated models)" in report["effects"][4]["reason"]
    assert "r1_cold is missing (no results: the stage was not materialized)" in report["effects"][4]["reason"]


def test_report_lists_every_model_and_effect_and_writes_its_files(lifecycle):
    models, pairs, out = lifecycle
    report = build_report(models, out, pairs, profile="tiny")
    md = (out / "report.md").read_text()
    for m in models:
        assert f"| {m.name} |" in md
    assert "MISSING: no results: the stage was not materialized" in md and "- `r1_cold`:" in md
    for before, after, label in pairs:
        assert f"| {label} | {before} -> {after} |" in md and f"- {label}, {before} -> {after}: " in md
    assert "**no measurable effect at this scale**" in md and "**helped**" in md and "**hurt**" in md
    assert "profile `tiny`" in md and "![" in md and "(pass_at_1.png)" in md
    assert "| v3_base | pretrained base | 2.66M / 1.25M | 30 |" in md
    p = models[4].parameters  # a ParamCounts
    assert f"| dense-half | distilled from r1 | {p.total / 1e6:.3g}M / {p.activated / 1e6:.3g}M |" in md
    assert (out / "pass_at_1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pq.read_table(out / "report_models.parquet").to_pylist()
    assert [r["name"] for r in table] == [m.name for m in models]
    assert [r["status"] for r in table] == ["evaluated", "evaluated", "missing", "evaluated", "evaluated"]
    assert table[3]["pass@1:countdown"] is not None and table[2]["pass@1"] is None
    assert len(pq.read_table(out / "report_effects.parquet")) == len(pairs)
    assert json.loads((out / "report.json").read_text())["verdicts"] == report["verdicts"]


def test_the_card_repeats_the_evaluation_summary_and_its_settings(lifecycle):
    from training.evaluate import report as evaluation_report
    from training.evaluate import summary_path

    models, pairs, out = lifecycle
    config = {"k": 4, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 256, "split": "heldout"}
    summary_path(models[3].results).write_text(json.dumps({"config": config, "tasks_file": "tasks.parquet"}))
    expected = evaluation_report(pq.read_table(models[3].results).to_pylist(), 4)["overall"]
    report = build_report(models, out, pairs)
    r1 = report["models"][3]
    assert (r1["pass@1"], [r1["pass@1_low"], r1["pass@1_high"]], r1["cons@k"]) == (
        expected["pass@1"], expected["pass@1_ci"], expected["cons@4"])
    md = (out / "report.md").read_text()
    assert "tasks `tasks.parquet`" in md and "temperature 0.6, top-p 0.95, at most 256 new tokens" in md


def test_unpaired_tasks_are_counted_and_a_bad_table_is_named(tmp_path):
    a = write_results(tmp_path / "a.parquet", {"x-1": [0.0], "x-2": [1.0], "x-3": [0.0]})
    b = write_results(tmp_path / "b.parquet", {"x-1": [1.0], "x-2": [1.0], "x-3": [0.0], "x-4": [1.0]})
    report = build_report([ModelEval("a", "", a), ModelEval("b", "", b)], tmp_path / "r", [("a", "b", "step")])
    e = report["effects"][0]
    assert (e["tasks"], e["only_before"], e["only_after"]) == (3, 0, 1)
    assert "1 task(s) answered by one model only are left out" in e["sentence"]
    pq.write_table(pa.Table.from_pylist([{"task_id": "x", "accuracy": 1.0}]), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet \(model 'c'\) lacks columns"):
        build_report([ModelEval("c", "", tmp_path / "bad.parquet")], tmp_path / "r", [])
    with pytest.raises(ValueError, match=r"\['a'\] appear more than once"):
        build_report([ModelEval("a", "", a), ModelEval("a", "", b)], tmp_path / "r", [])

