"""R1-Zero plumbing: rollouts line up with the training forward, a hostile sample does not spoil its
batch, and the reasoning_tasks -> r1_zero assets run GRPO on DeepSpeed with MLflow curves."""

import shutil
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import torch

from assets.r1_zero import reasoning_tasks, r1_zero
from assets.resources import MLflowTracking, SeekflowProfile
from pipelines.launcher import TrainingLauncher
from tests.pretrain_fixtures import as_run_config, build_shards
from training.grpo_loss import token_logprobs
from training.rewards import score_batch
from training.sandbox import SandboxPool
from training.settings import load_profile

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def base_home(tmp_path_factory):
    """A corpus, its tokenizer, and an untrained tiny model exported where v3_base puts it."""
    home = tmp_path_factory.mktemp("grpo_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEEKFLOW_HOME", str(home))
        tok_dir, _ = build_shards(home)
    from training.model import Transformer

    torch.manual_seed(0)
    export = home / "data" / "v3_base" / "export"
    Transformer(load_profile("tiny").model).save_pretrained(export)
    for f in tok_dir.iterdir():
        shutil.copy2(f, export / f.name)
    return home


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_rollout_masks_and_logprobs_match_the_training_forward(base_home, temperature):
    from tokenizers import Tokenizer

    from training.model import from_pretrained
    from training.rollout import encode_prompts, sample_groups

    export = base_home / "data" / "v3_base" / "export"
    model = from_pretrained(export, mtp=False)
    tok = Tokenizer.from_file(str(export / "tokenizer.json"))
    prompts = ["Calculate 3 + 1.", "Find x if 3x + 8 = 50."]
    roll = sample_groups(model, tok, prompts, group_size=3, max_new_tokens=12, temperature=temperature,
                         generator=torch.Generator().manual_seed(0))
    assert roll.ids.shape[0] == 6 and len(roll.texts) == 6
    prompt_lengths = [len(ids) for ids in encode_prompts(tok, prompts) for _ in range(3)]
    for i, (p, n) in enumerate(zip(prompt_lengths, roll.lengths)):
        assert roll.response_mask[i].sum().item() == n  # exactly the response tokens count
        assert roll.response_mask[i, p - 2].item() == 0 and roll.response_mask[i, p - 1].item() == 1
    with torch.no_grad():
        logp, _ = token_logprobs(model(roll.ids[:, :-1]), roll.ids[:, 1:], temperature)
    # the sampler's log-probs (cached generation) are the sampling policy's own, at its temperature
    diff = ((logp - roll.sample_logprobs) * roll.response_mask).abs().max().item()
    assert diff < 1e-4


def test_a_hostile_sample_leaves_the_rest_of_the_batch_scored():
    task = {"kind": "code", "answer": "", "numbers": [], "entry_point": "add",
            "tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"}
    good = "<think>sum</think> <answer>def add(a, b):\n    return a + b</answer>"
    wrong = "<think>sum</think> <answer>def add(a, b):\n    return a - b</answer>"
    hostile = "<think>x</think> <answer>import os\nwhile True:\n    os.fork()</answer>"
    responses = [good, hostile, good, wrong, good]
    with SandboxPool(4) as pool:
        scores = score_batch([task] * 5, responses, ("accuracy", "format"), pool)
    assert [s["accuracy"] for s in scores] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert all(s["format"] == 1.0 for s in scores)


GRPO_FAST = {
    "r1_zero.steps": 2, "r1_zero.prompts_per_step": 4, "r1_zero.group_size": 4, "r1_zero.micro_batch_size": 8,
    "r1_zero.max_new_tokens": 12, "evaluation.k": 2, "evaluation.limit": 10, "evaluation.max_new_tokens": 12, "r1_zero.learning_rate": 1e-4,
    "r1_zero.threads": 1, "r1_zero.checkpoint_every": 1,
    "tasks.counts": "{arithmetic: 20, linear: 20, countdown: 20, word: 20, code: 6}", "tasks.difficulties": "[1, 2]",
}


def test_reasoning_tasks_then_r1_zero(base_home, monkeypatch):
    monkeypatch.setenv("SEEKFLOW_HOME", str(base_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{base_home}/mlflow.db"
    resources = {"profile": SeekflowProfile(name="tiny", overrides=as_run_config(GRPO_FAST)),
                 "mlflow_tracking": MLflowTracking(tracking_uri=uri), "launcher": TrainingLauncher(kind="local")}
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([reasoning_tasks, r1_zero], resources=resources, instance=instance,
                            selection=["reasoning_tasks", "r1_zero"], raise_on_error=False)
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["heldout_not_in_corpus"] is True  # stdlib source holds none of the generated prompts
    md = {k: v.value for k, v in instance.get_latest_materialization_event(dg.AssetKey("r1_zero"))
          .asset_materialization.metadata.items()}
    for key in ("heldout_pass@1_start", "heldout_pass@1", "heldout_pass@1_ci", "registered_model", "final_reward"):
        assert key in md, sorted(md)
    assert md["heldout_tasks"] == 10
    assert (Path(md["export"]) / "config.json").is_file()

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    run = mlflow.search_runs(experiment_names=["seekflow"], filter_string="tags.`seekflow.asset` = 'r1_zero'",
                             output_format="list")[0]
    for metric in ("reward.accuracy", "reward.format", "accuracy", "response_length", "kl", "clip_fraction",
                   "entropy", "rollout_share", "rollout_tokens_per_second"):
        assert len(client.get_metric_history(run.info.run_id, metric)) == 2, metric
    assert client.get_model_version_by_alias("seekflow-r1-zero", "tiny").run_id == run.info.run_id

    evaluations = sorted((base_home / "data" / "evaluations").iterdir())
    assert len(evaluations) == 2  # the start model and the final one, each evaluated once
    # a second materialization resumes from the final checkpoint: nothing left to train, and the
    # start model's evaluation is reused rather than recomputed
    again = dg.materialize([r1_zero], resources=resources, instance=instance, raise_on_error=False)
    assert again.success
    md2 = {k: v.value for k, v in instance.get_latest_materialization_event(dg.AssetKey("r1_zero"))
           .asset_materialization.metadata.items()}
    assert md2["resumed_from_step"] == 2
    assert sorted((base_home / "data" / "evaluations").iterdir()) == evaluations


def _heldout(tmp_path: Path, name: str, correct: list[list[int]]) -> dict:
    """A `heldout_report` of a model whose k samples on task i scored correct[i], with its results table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.evaluate import report as evaluation_report

    rows = [{"task_id": f"t{i}", "family": "arithmetic", "difficulty": 1, "sample": s, "answer": "",
             "accuracy": float(c), "format": 1.0, "language": 1.0, "length": 10, "stopped": True}
            for i, samples in enumerate(correct) for s, c in enumerate(samples)]
    results = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), results)
    return {**evaluation_report(rows, len(correct[0]), 0.95), "results": str(results)}


def test_the_improvement_check_pairs_tasks_as_the_report_card_does(tmp_path):
    """The same 300 held-out tasks before and after: a gain of 0.04 on every 25th task lies inside both
    models' own (unpaired) intervals, yet paired by task it is clear, and the report card says "helped";
    the asset check says so too. A model that only swaps which tasks it solves fails the check."""
    import json
    import random

    from assets.r1_zero import grpo_result
    from training.grpo import heldout_change
    from training.report import HELPED, verdict

    rng = random.Random(0)
    start = [[int(rng.random() < 0.1) for _ in range(4)] for _ in range(300)]
    gained = [[1] * 4 if i % 25 == 0 else s for i, s in enumerate(start)]
    shuffled = start[150:] + start[:150]  # the same pass@1, on other tasks
    before = _heldout(tmp_path, "before", start)
    for name, after, improved in (("gained", gained, True), ("shuffled", shuffled, False)):
        summary = heldout_change(before, _heldout(tmp_path, name, after))
        out = tmp_path / name
        out.mkdir()
        (out / "summary.json").write_text(json.dumps({**summary, "export": str(out)}))
        check = grpo_result({}, "http://mlflow", out).check_results[0]
        if improved:
            assert summary["heldout_pass@1_ci"][0] < summary["heldout_pass@1_start_ci"][1]  # the intervals overlap
            assert verdict(*summary["heldout_pass@1_difference_ci"]) == HELPED
        assert check.passed is improved, (name, summary)
        gain = summary["heldout_pass@1"] - summary["heldout_pass@1_start"]
        assert check.metadata["difference"].value == pytest.approx(gain)
