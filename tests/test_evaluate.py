"""Evaluation: the statistics by hand, and one end-to-end run on a tiny random model."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.evaluate import majority_vote, pass_at_1_with_ci, summarize


def test_pass_at_1_t_interval_by_hand():
    # mean 0.5; squared deviations sum to 4 x 0.0625 = 0.25, sd = sqrt(0.25 / 7) = 0.188982,
    # se = sd / sqrt(8) = 0.066815, t(0.975, 7) = 2.364624: half-width 0.157994
    mean, low, high = pass_at_1_with_ci([0.25, 0.5, 0.75, 0.5, 0.5, 0.25, 0.75, 0.5])
    assert mean == 0.5
    assert low == pytest.approx(0.342006, abs=1e-6) and high == pytest.approx(0.657994, abs=1e-6)


def test_pass_at_1_edge_cases():
    # all tasks failed: the exact bound for 0 of 10, 1 - 0.025 ** (1 / 10) = 0.308497
    assert pass_at_1_with_ci([0.0] * 10) == pytest.approx((0.0, 0.0, 0.308497), abs=1e-6)
    assert pass_at_1_with_ci([1.0] * 10) == pytest.approx((1.0, 0.691503, 1.0), abs=1e-6)
    assert pass_at_1_with_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)  # t(0.975, 1) = 12.7: clipped to [0, 1]
    assert pass_at_1_with_ci([0.75]) == (0.75, 0.0, 1.0)
    with pytest.raises(ValueError):
        pass_at_1_with_ci([])


def test_majority_vote():
    assert majority_vote(["4", "5", " 4", None, "5"]) == ("4", 0)  # a tie goes to the first seen
    assert majority_vote([None, "7", "8", "8 "]) == ("8", 2)
    assert majority_vote([None, None]) == (None, None)


def test_summary_counts_cons_at_k_from_the_majority_sample():
    def row(task, s, answer, acc):
        return {"task_id": task, "sample": s, "answer": answer, "accuracy": acc, "format": 1.0,
                "language": 1.0, "length": 10 + s, "stopped": True}

    rows = [row("a", 0, "3", 1.0), row("a", 1, "3", 1.0), row("a", 2, "4", 0.0),
            row("b", 0, "x", 1.0), row("b", 1, "y", 0.0), row("b", 2, "y", 0.0)]
    s = summarize(rows, k=3)
    assert s["pass@1"] == pytest.approx(0.5) and s["cons@3"] == 0.5 and s["mean_length"] == 11
    assert s["tasks"] == 2 and s["samples"] == 6


def test_end_to_end_on_a_tiny_random_model(tmp_path, one_torch_thread):
    pytest.importorskip("training.rewards")
    import torch

    from tests.model_fixtures import tiny_model_config
    from training.corpus.tokenizer import train_tokenizer
    from training.evaluate import main
    from training.model import Transformer, save_pretrained
    from training.settings import TasksConfig, TokenizerConfig, WorkedExamplesConfig
    from training.tasks import make_tasks
    from training.tasks.worked import worked_example_documents

    docs = worked_example_documents(WorkedExamplesConfig(examples=200, examples_per_document=10))
    (tmp_path / "corpus" / "documents").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"id": str(i), "text": d["text"]} for i, d in enumerate(docs)]),
                   tmp_path / "corpus" / "documents" / "0.parquet")
    tok = train_tokenizer(tmp_path / "corpus", tmp_path / "tok", TokenizerConfig(vocab_size=400))
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(vocab_size=400, max_position_embeddings=256, original_max_position_embeddings=64))
    save_pretrained(model, tmp_path / "model")
    shutil.copy(tok, tmp_path / "model" / "tokenizer.json")
    make_tasks(TasksConfig(counts={"arithmetic": 6, "countdown": 6, "code": 6}, difficulties=[1], heldout_share=0.5),
               tmp_path / "tasks")
    heldout = [r for r in pq.read_table(tmp_path / "tasks" / "tasks.parquet").to_pylist() if r["split"] == "heldout"]

    out = tmp_path / "eval" / "results.parquet"
    summary = main(["--model", str(tmp_path / "model"), "--tasks", str(tmp_path / "tasks" / "tasks.parquet"),
                    "--k", "3", "--max-new-tokens", "12", "--batch-size", "8", "--out", str(out)])

    results = pq.read_table(out).to_pylist()
    assert len(results) == len(heldout) * 3
    assert {(r["task_id"], r["sample"]) for r in results} == {(t["id"], s) for t in heldout for s in range(3)}
    assert all(0 <= r["length"] <= 12 and set(r) >= {"response", "accuracy", "format", "language"} for r in results)
    assert set(summary["by_family"]) == {"arithmetic", "countdown", "code"}
    for group in (summary["overall"], *summary["by_family"].values()):
        low, high = group["pass@1_ci"]
        assert 0 <= low <= group["pass@1"] <= high <= 1
    assert json.loads(out.with_suffix(".summary.json").read_text())["overall"] == summary["overall"]


def test_a_changed_reward_definition_is_not_served_from_the_cache(tmp_path, monkeypatch):
    from training import rewards
    from training.eval_cache import evaluation_key
    from training.evaluate import EvalConfig

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "tasks.parquet").write_bytes(b"tasks")
    key = evaluation_key(tmp_path / "model", tmp_path / "tasks.parquet", EvalConfig())
    assert evaluation_key(tmp_path / "model", tmp_path / "tasks.parquet", EvalConfig()) == key
    monkeypatch.setattr(rewards, "REWARDS_VERSION", rewards.REWARDS_VERSION + 1)
    assert evaluation_key(tmp_path / "model", tmp_path / "tasks.parquet", EvalConfig()) != key
