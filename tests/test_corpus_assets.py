"""The corpus group materializes in-process on a fixture corpus, with the counts a user would check."""

import json
import random

import dagster as dg
import duckdb
import mlflow
import pytest

from assets.corpus import corpus_assets
from assets.resources import MLflowTracking, SeekflowProfile
from tests.corpus_fixtures import _vocabulary, planted_corpus, write_jsonl

def _module(rng: random.Random, vocab: list[str]) -> str:
    """A small Python module of distinct functions (random names and constants)."""
    out = []
    for _ in range(6):
        name, a, b = rng.choice(vocab), rng.choice(vocab), rng.choice(vocab)
        out.append(f"def {name}_{rng.randint(0, 999)}({a}, {b}):\n"
                   f"    \"\"\"Combine {a} with {b} and scale by {rng.randint(2, 99)}.\"\"\"\n"
                   f"    if {a} < {rng.randint(0, 50)}:\n        return {b} * {rng.randint(2, 9)}\n"
                   f"    return ({a} + {b}) // {rng.randint(2, 9)}\n")
    return "\n\n".join(out)


@pytest.fixture
def fixture_sources(tmp_path, monkeypatch):
    docs = planted_corpus(seed=3, unique=40, exact=4, near=4, max_edits=1)
    write_jsonl(tmp_path / "web" / "pages.jsonl", docs)
    with (tmp_path / "web" / "pages.jsonl").open("a") as f:
        f.write("{not json\n")
    code = tmp_path / "code"
    code.mkdir()
    rng = random.Random(5)
    vocab = _vocabulary(rng)
    for i in range(6):
        (code / f"mod{i}.py").write_text(_module(rng, vocab))
    (code / "copy_of_mod0.py").write_text((code / "mod0.py").read_text())
    monkeypatch.setenv("SEEKFLOW_WEB_SOURCES", str(tmp_path / "web"))
    monkeypatch.setenv("SEEKFLOW_CODE_SOURCES", str(tmp_path / "code"))
    return docs


def test_definitions_load():
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"web_sources", "code_sources", "web_documents", "code_documents", "filtered_web", "filtered_code",
            "deduplicated_corpus", "tokenizer", "pretraining_shards"} <= keys
    assert defs.resolve_job_def("full_lifecycle") and defs.resolve_job_def("corpus_job")
    # what `dagster dev` and the web server do on load: names must be unique across jobs and assets
    dg.Definitions.validate_loadable(defs)


def test_corpus_group_materializes_with_planted_duplicates(seekflow_home, fixture_sources):
    profile = SeekflowProfile(name="tiny", overrides={
        "executor.tasks": "1", "executor.workers": "1", "tokenizer.vocab_size": "400",
        "shards.sequence_length": "32", "shards.validation_fraction": "0.2", "web_filters.c4.min_num_sentences": "2",
    })
    tracking_uri = f"sqlite:///{seekflow_home}/mlflow.db"
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(corpus_assets, instance=instance,
                            resources={"profile": profile, "mlflow_tracking": MLflowTracking(tracking_uri=tracking_uri)})
    assert result.success

    def md(asset):
        mats = result.asset_materializations_for_node(asset)
        return {k: v.value for k, v in mats[-1].metadata.items()}

    web = md("web_documents")
    assert web["documents_in"] == 49 and web["excluded_by_reason"] == {"ingest:invalid_json": 1}
    dedup = md("deduplicated_corpus")
    assert dedup["excluded_by_reason"] == {"exact_duplicate": 5, "near_duplicate": 4}
    assert md("filtered_web")["documents_excluded"] == 0 and md("filtered_code")["documents_excluded"] == 0
    assert dedup["documents_kept"] == 40 + 6
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks), [(c.asset_key, c.check_name) for c in checks if not c.passed]

    shards = json.loads((seekflow_home / "data" / "pretraining_shards" / "index.json").read_text())
    assert shards["splits"]["train"]["tokens"] > 0 and shards["splits"]["validation"]["documents"] > 0
    for split in shards["splits"].values():  # per-source counts add up to what the shards hold
        assert sum(split["tokens_per_source"].values()) == split["tokens"]
        assert sum(split["documents_per_source"].values()) == split["documents"]
    assert sum(s["documents"] for s in shards["splits"].values()) == 46

    # the clusters table answers "what replaced this document" with DuckDB
    clusters = seekflow_home / "data" / "deduplicated_corpus" / "clusters.parquet"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{clusters}') WHERE kind = 'exact'").fetchall()[0][0] == 5

    # MLflow: one parent run for the Dagster run, one nested run per asset
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["seekflow"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["dagster.run_id"] == result.run_id
    nested = {r.data.tags["seekflow.asset"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert nested == {"web_documents", "code_documents", "filtered_web", "filtered_code", "deduplicated_corpus",
                      "tokenizer", "pretraining_shards"}
    dedup_run = next(r for r in runs if r.data.tags.get("seekflow.asset") == "deduplicated_corpus")
    assert dedup_run.data.metrics["docs_excluded"] == 9
    assert {i.dataset.name for i in dedup_run.inputs.dataset_inputs} == {"filtered_web", "filtered_code"}


def test_python_metadata_reads_installed_readmes_but_not_seekflows_own():
    # this README is about the pipeline, not a source: an edit must not be able to change the corpus
    import importlib.metadata

    from training.corpus.builtin import builtin_documents

    packages = {d["meta"]["package"].lower() for d in builtin_documents("python-metadata")}
    assert importlib.metadata.distribution("seekflow").metadata["Name"]  # installed, so it had to be skipped
    assert "dagster" in packages and "seekflow" not in packages
