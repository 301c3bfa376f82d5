"""benchmarks/bench_pretrain.py `gap`: the FP8-vs-BF16 loss comparison that BENCHMARKS.md's tables come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_runs(path: Path, runs: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs))
    return path


def test_gap_pairs_every_run_with_each_reference_and_the_references_with_each_other(bench, tmp_path):
    # two calls of the same BF16 run (the second gets its folder's name) and one FP8 run
    bf16 = {"losses": [[5, 4.0], [10, 2.0]], "validation": [[10, 2.0]], "windows": [1.0]}
    files = [write_runs(tmp_path / "call1" / "runs.json",
                        {"_about": "H100", "run_fp8": {"losses": [[5, 4.4], [10, 2.1], [15, 9.0]],
                                                       "validation": [[10, 2.02]]}, "run_bf16": bf16}),
             write_runs(tmp_path / "call2" / "runs.json",
                        {"run_bf16": {**bf16, "losses": [[5, 4.2], [10, 1.8]], "validation": [[10, 1.9]]}})]
    runs = bench.load_runs(files)
    assert list(runs) == ["run_fp8", "run_bf16", "run_bf16@call2"]  # "_about" is not a run
    table = bench.loss_gap(runs, "bf16", [5, 100])  # a bound past the last step ends at the last step
    # FP8 against each BF16 run; the second BF16 against the first once (the noise), not both ways
    assert table["pairs"] == [("run_fp8", "run_bf16"), ("run_bf16@call2", "run_bf16"), ("run_fp8", "run_bf16@call2")]
    assert table["validation"][10]["gaps"] == pytest.approx([0.01, -0.05, 0.12 / 1.9])
    # the means of each side, with each side's spread: FP8 2.02 against the BF16 runs' 1.95 (2.0 and 1.9);
    # the pooled variance over 3 - 2 degrees of freedom is 0.05^2 * 2, the standard error of the
    # difference of the means sqrt(0.005 * (1 + 1/2))
    assert table["means"][10] == pytest.approx({"others": 2.02, "refs": 1.95, "gap": 0.07 / 1.95,
                                                "two_se": 2 * (0.005 * 1.5) ** 0.5 / 1.95,
                                                "spread_others": 0.0, "spread_refs": 0.1 / 1.95})
    # training losses compare the same step's batch; step 15, logged by FP8 only, is left out
    assert table["phases"]["1-5"] == pytest.approx([0.1, 0.05, 0.2 / 4.2])
    assert table["phases"]["6-10"] == pytest.approx([0.05, 0.1, 0.3 / 1.8])
    assert list(table["phases"]) == ["1-5", "6-10"]


def test_gap_names_the_runs_when_no_reference_matches(bench):
    with pytest.raises(SystemExit, match=r"no run name contains 'bf16'.*run_fp8"):
        bench.loss_gap({"run_fp8": {"losses": [], "validation": []}}, "bf16", [10])
