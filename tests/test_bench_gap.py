"""benchmarks/bench_pretrain.py `gap`: the FP8-vs-BF16 loss comparison that BENCHMARKS.md's tables come from."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
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
    means = table["means"][10]
    assert {k: means[k] for k in ("others", "refs", "gap", "two_se", "spread_others", "spread_refs")} == \
        pytest.approx({"others": 2.02, "refs": 1.95, "gap": 0.07 / 1.95, "two_se": 2 * (0.005 * 1.5) ** 0.5 / 1.95,
                       "spread_others": 0.0, "spread_refs": 0.1 / 1.95})
    assert math.isnan(means["paired_gap"])  # names not PRECISION_SEED: no pairs by seed
    # training losses compare the same step's batch; step 15, logged by FP8 only, is left out
    assert table["phases"]["1-5"] == pytest.approx([0.1, 0.05, 0.2 / 4.2])
    assert table["phases"]["6-10"] == pytest.approx([0.05, 0.1, 0.3 / 1.8])
    assert list(table["phases"]) == ["1-5", "6-10"]
    assert table["phases_max"]["6-10"] == pytest.approx([0.05, 0.1, 0.3 / 1.8])  # one step a phase here


def test_gap_pairs_runs_of_the_same_seed_across_precisions(bench):
    # seeds far apart, each FP8 run 1% above its seed's BF16 run: unpaired, the seeds' spread swamps
    # the gap; paired by seed, it is exact
    runs = {f"{prec}_{seed}": {"losses": [], "validation": [[10, loss * (1.01 if prec == "fp8" else 1)]]}
            for seed, loss in ((1, 2.0), (2, 3.0), (3, 2.6)) for prec in ("bf16", "fp8")}
    row = bench.loss_gap(runs, "bf16", [10], means_only=True)["means"][10]
    assert row["gap"] == pytest.approx(0.01) and row["two_se"] > 0.2
    assert row["paired_gap"] == pytest.approx(0.01) and row["paired_two_se"] == pytest.approx(0, abs=1e-12)
    # a run without a partner of its seed is in the means but in no pair
    runs["fp8_4"] = {"losses": [], "validation": [[10, 2.5]]}
    row = bench.loss_gap(runs, "bf16", [10], means_only=True)["means"][10]
    assert row["paired_gap"] == pytest.approx(0.01) and row["others"] == pytest.approx((7.6 * 1.01 + 2.5) / 4)


def test_gap_pairs_runs_of_one_seed_within_their_file_only(bench, tmp_path, capsys):
    # benchmarks/results/ holds a study's batches side by side: the first batch's BF16 run of seed 6
    # lost its FP8 partner, the next batch ran seed 6 anew as a pair. Its FP8 run pairs with its own
    # batch's BF16 run (+1%), not with the first batch's (+10%), and a third batch's run of the same
    # name overwrites neither
    def run(loss):
        return {"losses": [[10, loss]], "validation": [[10, loss]]}
    results = tmp_path / "results"
    files = [write_runs(results / "batch_a.json", {"bf16_5": run(2.0), "fp8_5": run(2.0), "bf16_6": run(2.0)}),
             write_runs(results / "batch_b.json", {"bf16_6": run(2.2), "fp8_6": run(2.222)}),
             write_runs(results / "batch_c.json", {"bf16_6": run(3.0)})]
    runs = bench.load_runs(files)
    assert sorted(runs) == ["bf16_5", "bf16_6", "bf16_6@batch_c", "bf16_6@results", "fp8_5", "fp8_6"]
    table = bench.loss_gap(runs, "bf16", [10], means_only=True)
    assert table["means"][10]["paired_gap"] == pytest.approx(0.005)  # (0% + 1%) / 2
    assert "paired gap, 2 pairs" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"batch_b.json: given more than once"):
        bench.load_runs([files[1], files[0], results / ".." / "results" / "batch_b.json"])


def test_gap_by_file_shows_each_batch_apart(bench, tmp_path, capsys):
    # two batches of three seeds: in the first each FP8 run is 1% above its BF16 run, whose losses spread
    # over the seeds (the two runs of a seed agree: correlation 1); in the second FP8's losses go against
    # BF16's (2.1, 2.0, 2.1 beside 2.0, 2.1, 2.2: correlation 0), so its pairs spread. Each run's speed is
    # the median of its log windows after the first (the warm-up)
    def run(loss, windows):
        return {"losses": [], "validation": [[200, loss]], "windows": windows}
    first = write_runs(tmp_path / "a.json", {
        **{f"bf16_{s}": run(loss, [1.0, 10.0, 12.0]) for s, loss in ((1, 2.0), (2, 3.0), (3, 4.0))},
        **{f"fp8_{s}": run(loss * 1.01, [1.0, 8.0]) for s, loss in ((1, 2.0), (2, 3.0), (3, 4.0))}})
    second = write_runs(tmp_path / "b.json", {
        **{f"bf16_{s}": run(loss, [1.0, 20.0]) for s, loss in ((4, 2.0), (5, 2.1), (6, 2.2))},
        **{f"fp8_{s}": run(loss, [1.0, 16.0]) for s, loss in ((4, 2.1), (5, 2.0), (6, 2.1))}})
    by_file = bench.loss_gap(bench.load_runs([first, second]), "bf16", [100], means_only=True,
                             by_file=True)["by_file"]
    a, b = by_file[str(first)], by_file[str(second)]
    assert (a["pairs"], a["gap"], a["sd"], a["correlation"]) == pytest.approx((3, 0.01, 0.0, 1.0))
    gaps = [2.1 / 2.0 - 1, 2.0 / 2.1 - 1, 2.1 / 2.2 - 1]
    assert (b["pairs"], b["gap"], b["sd"], b["correlation"]) == \
        pytest.approx((3, statistics.mean(gaps), statistics.stdev(gaps), 0.0), abs=1e-12)
    assert a["tokens_per_s"] == (8.0, 11.0) and b["tokens_per_s"] == (16.0, 20.0)
    assert "| a.json | 3 | +1.000% |" in capsys.readouterr().out
    assert "by_file" not in bench.loss_gap(bench.load_runs([first, second]), "bf16", [100], means_only=True)


def test_gap_pairs_training_losses_by_seed_over_each_phase(bench):
    # FP8 1% above BF16 on seed 1's batches and 1% below on seed 2's until step 20, then 2% above on both:
    # the signed gaps cancel in the first phase and agree in the second
    def run(seed, prec):
        sign = {1: 1, 2: -1}[seed]
        factor = {s: 1 + (0.01 * sign if s <= 20 else 0.02) for s in (10, 20, 30, 40)}
        return {"losses": [[s, 3.0 * seed * (factor[s] if prec == "fp8" else 1)] for s in factor],
                "validation": [[40, 2.0]]}
    runs = {f"{prec}_{seed}": run(seed, prec) for seed in (1, 2) for prec in ("bf16", "fp8")}
    table = bench.loss_gap(runs, "bf16", [20], means_only=True)
    assert table["paired_phases"]["1-20"] == pytest.approx((0.0, 0.02))  # +1% and -1%: 2 SE = 2 * 0.01
    assert table["paired_phases"]["21-40"] == pytest.approx((0.02, 0.0))


def test_gap_by_step_shows_how_far_the_pairs_spread_at_each_logged_step(bench, capsys):
    # two pairs that part at step 20 (+3% and -1%) and meet again at step 30: the mean is the same at
    # every step, the pairs' spread is not, and that spread is what a mean over a phase hides
    def run(seed, prec):
        factor = {10: 1.0, 20: {1: 1.03, 2: 0.99}[seed], 30: 1.01}
        return {"losses": [[s, 3.0 * (factor[s] if prec == "fp8" else 1)] for s in factor],
                "validation": [[30, 2.0]]}
    runs = {f"{prec}_{seed}": run(seed, prec) for seed in (1, 2) for prec in ("bf16", "fp8")}
    steps = bench.loss_gap(runs, "bf16", [30], means_only=True, by_step=True)["paired_steps"]
    assert list(steps) == [10, 20, 30]
    assert steps[20]["gap"] == pytest.approx(0.01) and steps[20]["sd"] == pytest.approx(0.02 * math.sqrt(2))
    assert steps[30]["gap"] == pytest.approx(0.01) and steps[30]["sd"] == pytest.approx(0, abs=1e-12)
    assert "| 20 | +1.000% | 4.000% | 2.828% |" in capsys.readouterr().out
    assert "paired_steps" not in bench.loss_gap(runs, "bf16", [30], means_only=True)  # only when asked


@pytest.mark.parametrize("gaps, not_worse, within", [((0.002, 0.0, -0.002, 0.0), True, True),
                                                      ((0.004, 0.002, 0.0, 0.002), False, False),
                                                      ((-0.002, -0.004, -0.006, -0.004), True, False)])
def test_gap_reads_the_paired_interval_against_the_bound(bench, capsys, gaps, not_worse, within):
    # four pairs with the same spread (SD 0.163%, 2 SE 0.163%) around a mean of 0, +0.2% and -0.4%
    runs = {f"{prec}_{seed}": {"losses": [], "validation": [[50, 2.0 * (1 + gap if prec == "fp8" else 1)]]}
            for seed, gap in enumerate(gaps) for prec in ("bf16", "fp8")}
    bound = bench.loss_gap(runs, "bf16", [50], means_only=True, bound=0.0025)["bound"]
    assert (bound["step"], bound["pairs"]) == (50, 4)
    two_se = 2 * (0.002 * math.sqrt(2 / 3)) / math.sqrt(4)  # 2 x SD / sqrt(pairs)
    assert (bound["low"], bound["high"]) == pytest.approx((sum(gaps) / 4 - two_se, sum(gaps) / 4 + two_se))
    assert (bound["not_worse"], bound["within"]) == (not_worse, within)
    assert bound["pairs_needed"] == 2  # (2 SD / bound)^2 = 1.7, rounded up
    out = capsys.readouterr().out
    assert f"not worse by 0.25%: {'yes' if not_worse else 'no'}" in out
    assert f"within +-0.25%: {'yes' if within else 'no'}" in out


def test_gap_refuses_a_bound_that_is_not_positive(tmp_path):
    runs = write_runs(tmp_path / "runs.json", {"bf16_1": {"losses": [], "validation": [[10, 2.0]]}})
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "bench_pretrain.py"), "gap", str(runs), "--bound", "0"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--bound 0.0: a relative gap in percent, greater than 0" in done.stderr


def test_gap_names_the_runs_when_no_reference_matches(bench):
    with pytest.raises(SystemExit, match=r"no run name contains 'bf16'.*run_fp8"):
        bench.loss_gap({"run_fp8": {"losses": [], "validation": []}}, "bf16", [10])


def write_history(run_dir: Path, losses: list[tuple[int, float]], val: tuple[int, float]) -> Path:
    # training/pretrain.py's history.json: logged windows, then a validation entry
    hist = [{"step": s, "loss": v, "tokens_per_second": 100.0 + s} for s, v in losses]
    run_dir.mkdir(parents=True)
    (run_dir / "history.json").write_text(json.dumps(hist + [{"step": val[0], "val_loss": val[1]}]))
    return run_dir


def test_trainer_histories_become_runs_that_gap_compares(bench, tmp_path, capsys):
    # run_fp8_gap.sh's layout: runs/{bf16,fp8}_SEED, and the control run under another folder
    dirs = [write_history(tmp_path / "runs" / "bf16_1", [(10, 4.0), (20, 2.0)], (20, 2.0)),
            write_history(tmp_path / "runs" / "fp8_1", [(10, 4.4), (20, 2.1)], (20, 2.1)),
            write_history(tmp_path / "control" / "bf16_1", [(10, 4.0), (20, 2.0)], (20, 1.9))]
    out = tmp_path / "gap" / "seed_1.json"
    runs = bench.history_runs(dirs, out)
    assert list(runs) == ["bf16_1", "fp8_1", "bf16_1@control"]  # a name seen before gets its folder's
    read_back = bench.load_runs([out])  # what `gap` reads: the runs, each with its file and seed to pair by
    assert {n: {k: v for k, v in r.items() if k != "pairing"} for n, r in read_back.items()} == json.loads(json.dumps(runs))
    assert read_back["fp8_1"]["pairing"] == [str(out), "1"] and read_back["bf16_1@control"]["pairing"] == [str(out), "1@control"]
    assert runs["fp8_1"]["losses"] == [(10, 4.4), (20, 2.1)] and runs["fp8_1"]["validation"] == [(20, 2.1)]
    assert runs["fp8_1"]["windows"] == [110.0, 120.0]
    table = bench.loss_gap(bench.load_runs([out]), "bf16", [20])
    assert table["validation"][20]["gaps"] == pytest.approx([0.05, -0.05, 0.2 / 1.9])
    # FP8's training loss 10% then 5% above BF16's: the phase's mean and its largest gap
    assert table["phases"]["1-20"][0] == pytest.approx(0.075) and table["phases_max"]["1-20"][0] == pytest.approx(0.1)
    capsys.readouterr()
    # several seeds: the means of each side alone, no pairwise tables
    means = bench.loss_gap(bench.load_runs([out]), "bf16", [20], means_only=True)
    printed = capsys.readouterr().out
    assert means["means"][20]["gap"] == pytest.approx(2.1 / 1.95 - 1)
    assert "fp8_1 vs bf16_1" not in printed and "mean, bf16" in printed and not means["phases"]


def test_runs_names_the_run_without_a_history(bench, tmp_path):
    (tmp_path / "fp8_2").mkdir()
    with pytest.raises(SystemExit, match=r"fp8_2/history.json: no history.json.*train.log"):
        bench.history_runs([tmp_path / "fp8_2"], tmp_path / "out.json")


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_fp8_gap.sh"


def test_gap_script_keeps_finished_runs_and_reports_over_all_of_them(tmp_path):
    # a study resumed (or completed with runs copied in from another machine): every run of seed 1 has
    # its history, so none trains again, and the summary and gaps are computed over what is there
    study = tmp_path / "study"
    for run, val in (("runs/bf16_1", 2.0), ("runs/fp8_1", 2.1), ("repeat/bf16_1", 2.0), ("control/bf16_1", 1.9)):
        write_history(study / run, [(10, 4.0), (20, val)], (20, val))
    done = subprocess.run(["bash", str(SCRIPT), str(study)], capture_output=True, text=True,
                          env={**os.environ, "SEEDS": "1", "STEPS": "20", "PY": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    for run in ("runs/bf16_1", "runs/fp8_1", "repeat/bf16_1", "control/bf16_1"):
        assert f"{run}: history.json there, not run again" in done.stdout
        assert not (study / run / "train.log").exists()
        assert json.loads((study / run / "stage.json").read_text())["profile"]["pretrain"]["steps"] == 20
    assert "| 20 | 2.0000 | 2.1000 | 1.9000 | +5.000% | -5.000% |" in done.stdout  # seed 1: FP8 and the control
    assert "bf16 seed 1 run twice: bitwise the same losses" in done.stdout  # the repeat's history equals the run's


def test_gap_script_without_repeats_runs_and_compares_only_the_seeds(tmp_path):
    # REPEATS=0: a study continued with more seeds makes no repeat or control run, and says nothing of them
    study = tmp_path / "study"
    for run, val in (("runs/bf16_9", 2.0), ("runs/fp8_9", 2.1)):
        write_history(study / run, [(10, 4.0), (20, val)], (20, val))
    done = subprocess.run(["bash", str(SCRIPT), str(study)], capture_output=True, text=True,
                          env={**os.environ, "SEEDS": "9", "STEPS": "20", "REPEATS": "0", "PY": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (study / "repeat").exists() and not (study / "control").exists()
    assert "run twice" not in done.stdout
    assert "| 20 | 2.0000 | 2.1000 | +5.000% |" in done.stdout


def stand_in_python(tools: Path, training: str) -> Path:
    """`tools`/python, the interpreter the study scripts are given: `-m training.pretrain --config F`
    runs the shell `training` instead (F is $4), a first CUDA context is made at once, and anything
    else goes to this Python."""
    tools.mkdir(exist_ok=True)
    python = tools / "python"
    python.write_text(f"""#!/bin/sh
case "$1 $2" in
  "-m training.pretrain") {training} ;;
  "-c import torch; torch.zeros(1, device='cuda')") exit 0 ;;
esac
exec {sys.executable} "$@"
""")
    python.chmod(0o755)
    return python


def stand_in_trainer(tools: Path, seen: Path, failing: str = "-") -> Path:
    """A stand-in python whose trainer appends the run's folder name and its SEEKFLOW_KERNEL_CHOICES to
    `seen` and writes the history a run leaves, or fails for the run whose folder name is `failing`."""
    return stand_in_python(tools, f"""run=$(dirname "$4")
    echo "$(basename "$run") $SEEKFLOW_KERNEL_CHOICES" >> {seen}
    [ "$(basename "$run")" = "{failing}" ] && exit 1
    exec {sys.executable} -c "import json, sys; open(sys.argv[1], 'w').write(json.dumps([
 {{'step': 10, 'loss': 4.0, 'tokens_per_second': 100.0}}, {{'step': 20, 'loss': 3.0, 'tokens_per_second': 100.0}},
 {{'step': 20, 'val_loss': 2.0}}]))" "$run/history.json\"""")


def gap_script(study: Path, python: Path, seeds: str, **env) -> subprocess.CompletedProcess:
    """run_fp8_gap.sh on a study whose (synthetic) data is there already, without repeats."""
    index = study / "data" / "pretraining_shards" / "index.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text('{"source": "synthetic"}')
    return subprocess.run(["bash", str(SCRIPT), str(study)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SEEDS": seeds, "STEPS": "20", "REPEATS": "0", "PY": str(python),
                               **env})


@pytest.mark.parametrize("keep_weights", ["0", "1"])
def test_gap_script_runs_keep_no_weights_and_share_one_file_of_kernel_choices(tmp_path, keep_weights):
    # the study reads the runs' losses: by default they write no checkpoint or export (~10 GB a run at full
    # width, 25-35 s of its time), KEEP_WEIGHTS=1 keeps them; and every run takes the study's one file
    # of kernel choices, so its FP8 runs use the same kernels
    study, seen = tmp_path / "study", tmp_path / "seen.log"
    done = gap_script(study, stand_in_trainer(tmp_path / "bin", seen), "1", KEEP_WEIGHTS=keep_weights)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    choices = study / "kernel_choices.json"
    assert sorted(seen.read_text().splitlines()) == [f"bf16_1 {choices}", f"fp8_1 {choices}"]
    for run in ("bf16_1", "fp8_1"):
        train = json.loads((study / "runs" / run / "stage.json").read_text())["profile"]["pretrain"]
        assert train["checkpoint_every"] == (20 if keep_weights == "1" else 0)
    assert "| 20 | 2.0000 | 2.0000 | +0.000% |" in done.stdout


def test_gap_script_starts_no_run_that_would_end_after_the_deadline(tmp_path):
    # seed 1 finished in an earlier call, each run in 100 s; 50 s are left before the deadline: seed 2's
    # runs are not started (they wait for the next call), and the report covers seed 1
    study, seen = tmp_path / "study", tmp_path / "seen.log"
    for run, val in (("runs/bf16_1", 2.0), ("runs/fp8_1", 2.1)):
        (write_history(study / run, [(10, 4.0), (20, val)], (20, val)) / "wall_s").write_text("100\n")
    done = gap_script(study, stand_in_trainer(tmp_path / "bin", seen), "1 2", DEADLINE=str(int(time.time()) + 50))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not seen.exists()
    assert "runs/bf16_2: not started, as it would end after the deadline (a run of its precision took 100 s)" \
        in done.stdout
    assert "## seed 2: not compared, a run without its history.json" in done.stdout
    assert "| 20 | 2.1000 | 2.0000 | +5.000% |" in done.stdout.split("## all seeds")[1]


def test_gap_script_reports_the_other_runs_when_one_fails(tmp_path):
    # a run that fails leaves its seed out of the comparison, not the whole report; a finished run
    # records how long it took (what DEADLINE judges the next runs by)
    study, seen = tmp_path / "study", tmp_path / "seen.log"
    done = gap_script(study, stand_in_trainer(tmp_path / "bin", seen, failing="fp8_2"), "1 2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"runs/fp8_2 failed: {study}/runs/fp8_2/train.log" in done.stdout
    assert "## seed 2: not compared" in done.stdout and "## seed 1\n" in done.stdout
    assert "(1 not bf16, 2 bf16)" in done.stdout.split("## all seeds")[1]
    assert (study / "runs" / "bf16_2" / "wall_s").read_text().strip().isdigit()
    assert not (study / "runs" / "fp8_2" / "wall_s").exists()


@pytest.mark.parametrize("setting, said", [("WIDTH=half", "quarter and full"), ("REPEATS=2", "1 (default) and 0"),
                                            ("DATA=web", "synthetic (default) and code"),
                                            ("KEEP_WEIGHTS=yes", "0 (default) and 1")])
def test_gap_script_refuses_an_unknown_value_before_making_anything(tmp_path, setting, said):
    name, value = setting.split("=")
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "study")], env={**os.environ, name: value},
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert setting in done.stderr and said in done.stderr
    assert not (tmp_path / "study").exists()


def test_gap_script_refuses_a_study_whose_data_is_of_the_other_kind(tmp_path):
    # continuing a synthetic-stream study with DATA=code would compare runs on different data
    study = tmp_path / "study"
    subprocess.run([sys.executable, str(SCRIPT.parent / "bench_pretrain.py"), "data", str(study / "data"),
                    "--vocab", "64", "--seq", "16", "--train", "8", "--validation", "8"], check=True, capture_output=True)
    done = subprocess.run(["bash", str(SCRIPT), str(study)], capture_output=True, text=True,
                          env={**os.environ, "SEEDS": "1", "STEPS": "20", "DATA": "code", "PY": sys.executable})
    assert done.returncode == 2
    assert "holds DATA=synthetic shards, not DATA=code" in done.stderr
    assert not (study / "runs" / "bf16_1").exists()


DEVICE_SCRIPT = SCRIPT.parent / "run_gap_device.sh"


def device_call(tmp_path: Path, study: Path, out: Path, tools: Path, run_line: str = ":"):
    """run_gap_device.sh on `study`, seed 1 finished in an earlier call and seed 2's runs stand-ins that
    only wait (`run_line`: shell run first in each), with a budget of 15 s and the stand-in tools in
    `tools` (a `python` wrapper is written there) first on the PATH."""
    for run, val in (("runs/bf16_1", 2.0), ("runs/fp8_1", 2.1)):
        write_history(study / run, [(10, 4.0), (20, val)], (20, val))
    python = stand_in_python(tools, f'{run_line}; exec {sys.executable} -c "import time; time.sleep(300)"')
    return subprocess.run(["bash", str(DEVICE_SCRIPT), str(study)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "SEEDS": "1 2", "STEPS": "20",
                               "REPEATS": "0", "BUDGET_S": "15", "LANES": "2", "OUT": str(out),
                               "WHEELS": str(tmp_path / "no-wheels"), "PY": str(python)})


def test_device_call_stops_the_study_at_its_budget_and_packs_the_finished_runs(tmp_path):
    # seed 1 finished in an earlier call; seed 2's runs are in flight when the budget ends: they are
    # stopped (no process of this study left), the finished pair is compared and everything packed.
    # The runs in flight are stand-ins that only wait. A lock file that an earlier call's run left in the
    # study's own extension build folder (stopped in DeepSpeed's start) is cleared: it would hang every run
    study, out = tmp_path / "study", tmp_path / "out"
    stale = study / "torch_extensions" / "deepspeed_shm_comm" / "lock"
    stale.parent.mkdir(parents=True)
    stale.touch()
    done = device_call(tmp_path, study, out, tmp_path / "bin")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "BUDGET_S=15 spent" in done.stdout and not stale.exists() and "finished: bf16_1 fp8_1" in done.stdout
    assert "| 20 | 2.1000 | 2.0000 | +5.000% |" in (out / "gap.log").read_text()
    assert (study / "runs" / "fp8_2" / "train.log").exists() and not (study / "runs" / "fp8_2" / "history.json").exists()
    left = subprocess.run(["pgrep", "-f", f"training.pretrain --config {study}/"], capture_output=True, text=True)
    assert left.stdout == ""
    packed = subprocess.run(["tar", "tzf", str(out / "gap.tgz")], capture_output=True, text=True, check=True).stdout
    assert "./runs/fp8_1/history.json" in packed and "./runs/fp8_2/stage.json" in packed


@pytest.mark.parametrize("context_reaches_mps, daemon_there", [(True, False), (False, False), (True, True)])
def test_device_call_shares_the_gpu_through_mps_and_falls_back_to_turns(tmp_path, context_reaches_mps, daemon_there):
    # a machine with a GPU (stand-in nvidia-smi) and CUDA's MPS control: the daemon is started and a first
    # CUDA context made; where the daemon then lists a server, the runs start with its pipe and the daemon
    # is told to quit when the call ends. A context that cannot reach the daemon runs without it, and no
    # server is listed: the daemon is told to quit at once and the runs start without its pipe, taking
    # turns on the GPU as before. $OUT/mps.txt says which. A daemon left on the pipe by an earlier call
    # refuses to start again, and is used
    study, out, tools = tmp_path / "study", tmp_path / "out", tmp_path / "bin"
    tools.mkdir()
    mps_log, run_env = tmp_path / "mps.log", tmp_path / "run_env.log"
    server = "4242" if context_reaches_mps else ""
    for name, body in (
            ("nvidia-smi", 'case "$*" in *nounits*) echo 40000 ;; *) echo "Stand-in GPU, 40000 MiB" ;; esac'),
            ("nvidia-cuda-mps-control",
             f'if [ "$1" = -d ]; then echo "daemon $CUDA_MPS_PIPE_DIRECTORY" >> {mps_log}; '
             f'exit {1 if daemon_there else 0}; fi\n'
             f'read -r told; echo "told: $told" >> {mps_log}\n'
             f'[ "$told" = get_server_list ] && echo "{server}"; exit 0')):
        (tools / name).write_text(f"#!/bin/sh\n{body}\n")
        (tools / name).chmod(0o755)
    done = device_call(tmp_path, study, out, tools, f'echo "${{CUDA_MPS_PIPE_DIRECTORY:-no MPS}}" >> {run_env}')
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "finished: bf16_1 fp8_1" in done.stdout
    pipe = study / "mps" / "pipe"
    assert mps_log.read_text().splitlines() == [f"daemon {pipe}", "told: get_server_list", "told: quit"]
    seen = set(run_env.read_text().splitlines())  # the two runs of seed 2 started, each saw this
    if context_reaches_mps:
        assert "MPS on (server 4242)" in (out / "mps.txt").read_text() and seen == {str(pipe)}
    else:
        assert "MPS not in use" in (out / "mps.txt").read_text() and seen == {"no MPS"}
