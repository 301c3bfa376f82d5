"""The `corpus` asset group: sources -> documents -> filtered -> deduplicated -> tokenizer -> shards.

Assets orchestrate and record; the work happens in training/corpus (datatrove pipelines). Each
asset writes its tables under $SEEKFLOW_HOME/data/<asset>/, logs a nested MLflow run, and reports
its checks with the materialization: schema, kept + excluded = input, and the stage's own
(no exact duplicate left, the tokenizer round-trips text, the splits cover the corpus).

Sources are observable: their DataVersion is a content fingerprint, so a changed file marks
everything downstream stale, and with the automation sensor on, the group rebuilds eagerly.
"""


import json
from pathlib import Path

import dagster as dg
import duckdb
import mlflow

from assets.resources import MLflowTracking, SeekflowProfile
from training import tracking
from training.corpus import stages
from training.corpus.schema import DOCUMENT_COLUMNS, EXCLUDED_COLUMNS
from training.corpus.shards import make_shards
from training.corpus.sources import configured_sources, fingerprint, resolve_sources
from training.corpus.tokenizer import round_trip_failures, train_tokenizer
from training.settings import data_dir, seekflow_home

GROUP = "corpus"
EAGER = dg.AutomationCondition.eager()

ACCOUNTING = "kept_plus_excluded_equals_input"
SCHEMA = "schema"


def _logging_dir(context: dg.AssetExecutionContext, name: str) -> Path:
    # per Dagster run: a retry of the run resumes finished datatrove tasks, a new run starts over
    return seekflow_home() / "logs" / "datatrove" / context.run_id / name


def _code_version(context: dg.AssetExecutionContext) -> str:
    return context.assets_def.code_versions_by_key[context.asset_key] or ""


def _checks(asset: str, *extra: dg.AssetCheckSpec) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(SCHEMA, asset=asset, description="documents and excluded tables have the document schema"),
        dg.AssetCheckSpec(ACCOUNTING, asset=asset, description="every input document is kept or excluded with a reason"),
        *extra,
    ]


# ---------------------------------------------------------------------------------------------
# sources


def _observe(kind: str, profile: SeekflowProfile) -> dg.ObserveResult:
    p = profile.load()
    items = resolve_sources(kind, p.corpus)
    readable = [i for i in items if i.format != "excluded"]
    return dg.ObserveResult(
        data_version=dg.DataVersion(fingerprint(items)),
        metadata={
            "entries": dg.MetadataValue.json(configured_sources(kind)),
            "items": len(items),
            "readable_items": len(readable),
            "skipped_items": len(items) - len(readable),
        },
    )


@dg.observable_source_asset(group_name=GROUP, required_resource_keys={"profile"},
                            description="Web-like prose sources (SEEKFLOW_WEB_SOURCES); version = content fingerprint")
def web_sources(context) -> dg.ObserveResult:
    return _observe("web", context.resources.profile)


@dg.observable_source_asset(group_name=GROUP, required_resource_keys={"profile"},
                            description="Code sources (SEEKFLOW_CODE_SOURCES); version = content fingerprint")
def code_sources(context) -> dg.ObserveResult:
    return _observe("code", context.resources.profile)


# ---------------------------------------------------------------------------------------------
# reporting shared by every document stage


def _schema_check(stage_dir: Path) -> dg.AssetCheckResult:
    problems = []
    for table, expected in (("documents", DOCUMENT_COLUMNS), ("excluded", EXCLUDED_COLUMNS)):
        files = list((stage_dir / table).glob("*.parquet"))
        if not files:
            continue
        cols = [r[0] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{stage_dir / table}/*.parquet')").fetchall()]
        if cols != list(expected):
            problems.append(f"{table}: columns {cols}, expected {list(expected)}")
    return dg.AssetCheckResult(check_name=SCHEMA, passed=not problems,
                               metadata={"problems": dg.MetadataValue.json(problems)})


def _accounting_check(result: stages.StageResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=ACCOUNTING,
        passed=result.input == result.kept + result.excluded,
        metadata={"input": result.input, "kept": result.kept, "excluded": result.excluded},
    )


def _dedup_rate_by_source(result: stages.StageResult) -> dict[str, float]:
    kept = stages.count_by_source(result.stage_dir, "documents")
    removed = stages.count_by_source(result.stage_dir, "excluded")
    return {s: round(removed.get(s, 0) / (kept.get(s, 0) + removed.get(s, 0)), 4) for s in sorted(set(kept) | set(removed))}


def _record(context: dg.AssetExecutionContext, tracker: MLflowTracking, result: stages.StageResult,
            params: dict, inputs: dict[str, Path], extra_checks: list[dg.AssetCheckResult] = (),
            extra_metadata: dict | None = None) -> dg.MaterializeResult:
    with tracker.asset_run(context, _code_version(context)) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for name, folder in inputs.items():
            tracking.log_input_table(name, folder)
        mlflow.log_metrics({"docs_in": result.input, "docs_out": result.kept, "docs_excluded": result.excluded})
        mlflow.log_metrics({f"excluded.{k.replace(':', '.')}": v for k, v in result.excluded_by_reason.items()})
        mlflow.log_dict(result.stats, "datatrove_stats.json")
        url = tracking.run_url(run)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(result.stage_dir)),
            "documents_in": result.input,
            "documents_kept": result.kept,
            "documents_excluded": result.excluded,
            "excluded_by_reason": dg.MetadataValue.json(result.excluded_by_reason),
            "documents_by_source": dg.MetadataValue.json(stages.count_by_source(result.stage_dir)),
            "mlflow_run": dg.MetadataValue.url(url),
            **(extra_metadata or {}),
        },
        check_results=[_schema_check(result.stage_dir), _accounting_check(result), *extra_checks],
    )


# ---------------------------------------------------------------------------------------------
# documents and filters


def _ingest(kind: str, context, profile: SeekflowProfile, tracker: MLflowTracking) -> dg.MaterializeResult:
    p = profile.load()
    name = f"{kind}_documents"
    items = resolve_sources(kind, p.corpus)
    result = stages.ingest(kind, items, data_dir(name), p.corpus, p.executor, _logging_dir(context, name))
    params = {f"corpus.{k}": v for k, v in vars(p.corpus).items()} | {"sources": ",".join(configured_sources(kind))}
    return _record(context, tracker, result, params, {})


@dg.asset(group_name=GROUP, deps=[web_sources], code_version="1", automation_condition=EAGER,
          check_specs=_checks("web_documents"), kinds={"datatrove", "parquet"})
def web_documents(context: dg.AssetExecutionContext, profile: SeekflowProfile, mlflow_tracking: MLflowTracking):
    """Web sources read into documents: JSONL, Parquet, WARC, HTML (Trafilatura), text files."""
    return _ingest("web", context, profile, mlflow_tracking)


@dg.asset(group_name=GROUP, deps=[code_sources], code_version="1", automation_condition=EAGER,
          check_specs=_checks("code_documents"), kinds={"datatrove", "parquet"})
def code_documents(context: dg.AssetExecutionContext, profile: SeekflowProfile, mlflow_tracking: MLflowTracking):
    """Source files by extension, with language and path; binaries and unreadable files excluded."""
    return _ingest("code", context, profile, mlflow_tracking)


def _filter(kind: str, context, profile: SeekflowProfile, tracker: MLflowTracking) -> dg.MaterializeResult:
    p = profile.load()
    upstream, name = data_dir(f"{kind}_documents"), f"filtered_{kind}"
    result = stages.filter_documents(kind, upstream, data_dir(name), p.web_filters, p.code_filters, p.executor,
                                     _logging_dir(context, name))
    params = {k: v for k, v in p.flat().items() if k.startswith(f"{kind}_filters.")}
    return _record(context, tracker, result, params, {f"{kind}_documents": upstream / "documents"})


@dg.asset(group_name=GROUP, deps=[web_documents], code_version="1", automation_condition=EAGER,
          check_specs=_checks("filtered_web"), kinds={"datatrove", "parquet"})
def filtered_web(context: dg.AssetExecutionContext, profile: SeekflowProfile, mlflow_tracking: MLflowTracking):
    """datatrove's Gopher quality, Gopher repetition, C4 and FineWeb quality filters."""
    return _filter("web", context, profile, mlflow_tracking)


@dg.asset(group_name=GROUP, deps=[code_documents], code_version="1", automation_condition=EAGER,
          check_specs=_checks("filtered_code"), kinds={"datatrove", "parquet"})
def filtered_code(context: dg.AssetExecutionContext, profile: SeekflowProfile, mlflow_tracking: MLflowTracking):
    """Code heuristics: size bounds, line lengths, alphanumeric fraction, auto-generated markers."""
    return _filter("code", context, profile, mlflow_tracking)


# ---------------------------------------------------------------------------------------------
# dedup


NO_EXACT_DUPLICATES = "no_exact_duplicates"


def _no_exact_duplicates(stage_dir: Path) -> dg.AssetCheckResult:
    rows, distinct = duckdb.sql(
        f"SELECT count(*), count(DISTINCT md5(text)) FROM read_parquet('{stage_dir}/documents/*.parquet')").fetchall()[0]
    return dg.AssetCheckResult(check_name=NO_EXACT_DUPLICATES, passed=rows == distinct,
                               metadata={"documents": rows, "distinct_texts": distinct})


@dg.asset(group_name=GROUP, deps=[filtered_web, filtered_code], code_version="1", automation_condition=EAGER,
          check_specs=_checks("deduplicated_corpus", dg.AssetCheckSpec(
              NO_EXACT_DUPLICATES, asset="deduplicated_corpus", blocking=True,
              description="no two kept documents have the same text")),
          kinds={"datatrove", "duckdb", "parquet"})
def deduplicated_corpus(context: dg.AssetExecutionContext, profile: SeekflowProfile, mlflow_tracking: MLflowTracking):
    """Exact dedup, then MinHash (datatrove's four stages). Clusters in clusters.parquet for DuckDB."""
    p = profile.load()
    inputs = {"filtered_web": data_dir("filtered_web"), "filtered_code": data_dir("filtered_code")}
    out = data_dir("deduplicated_corpus")
    result = stages.deduplicate(list(inputs.values()), out, p.dedup.minhash, p.executor,
                                _logging_dir(context, "deduplicated_corpus"))
    params = {k: v for k, v in p.flat().items() if k.startswith("dedup.")}
    return _record(
        context, mlflow_tracking, result, params, {k: v / "documents" for k, v in inputs.items()},
        extra_checks=[_no_exact_duplicates(out)],
        extra_metadata={
            "clusters": result.extra["clusters"],
            "dedup_rate_by_source": dg.MetadataValue.json(_dedup_rate_by_source(result)),
            "clusters_table": dg.MetadataValue.path(str(out / "clusters.parquet")),
        },
    )


# ---------------------------------------------------------------------------------------------
# tokenizer and shards

ROUND_TRIP = "round_trips_text"
SPLITS_COVER = "splits_cover_corpus"


@dg.asset(group_name=GROUP, deps=[deduplicated_corpus], code_version="2", automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec(ROUND_TRIP, asset="tokenizer",
                                         description="decode(encode(text)) == text on a corpus sample")],
          kinds={"huggingface"})
def tokenizer(context: dg.AssetExecutionContext, profile: SeekflowProfile, mlflow_tracking: MLflowTracking):
    """Byte-level BPE (tokenizers) with chat and reasoning special tokens; loads in transformers."""
    p = profile.load()
    corpus, out = data_dir("deduplicated_corpus"), data_dir("tokenizer")
    path = train_tokenizer(corpus, out, p.tokenizer)
    sample = [r[0] for r in duckdb.sql(
        f"SELECT text FROM read_parquet('{corpus}/documents/*.parquet') ORDER BY md5(id) LIMIT 200").fetchall()]
    failures = round_trip_failures(path, sample)
    vocab = json.loads(path.read_text())["model"]["vocab"]
    with mlflow_tracking.asset_run(context, _code_version(context)) as run:
        mlflow.log_params({f"tokenizer.{k}": v for k, v in vars(p.tokenizer).items()})
        tracking.log_input_table("deduplicated_corpus", corpus / "documents")
        mlflow.log_metrics({"vocab_size": len(vocab), "round_trip_failures": len(failures)})
        mlflow.log_artifacts(str(out), "tokenizer")
        url = tracking.run_url(run)
    return dg.MaterializeResult(
        metadata={"path": dg.MetadataValue.path(str(path)), "vocab_size": len(vocab), "mlflow_run": dg.MetadataValue.url(url)},
        check_results=[dg.AssetCheckResult(check_name=ROUND_TRIP, passed=not failures,
                                           metadata={"sampled": len(sample), "failures": len(failures)})],
    )


@dg.asset(group_name=GROUP, deps=[deduplicated_corpus, tokenizer], code_version="1", automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec(SPLITS_COVER, asset="pretraining_shards",
                                         description="train + validation documents = corpus documents")],
          kinds={"datatrove"})
def pretraining_shards(context: dg.AssetExecutionContext, profile: SeekflowProfile, mlflow_tracking: MLflowTracking):
    """Tokenized, packed to the sequence length, train/validation split; flat binary shards + index."""
    p = profile.load()
    corpus, out = data_dir("deduplicated_corpus"), data_dir("pretraining_shards")
    index = make_shards(corpus, data_dir("tokenizer") / "tokenizer.json", out, p.shards, p.executor,
                        _logging_dir(context, "pretraining_shards"))
    splits = index["splits"]
    corpus_docs = stages.count_documents(corpus)
    split_docs = sum(s["documents"] for s in splits.values())
    tokens_by_source: dict[str, int] = {}
    for s in splits.values():
        for src, n in s["tokens_per_source"].items():
            tokens_by_source[src] = tokens_by_source.get(src, 0) + n
    with mlflow_tracking.asset_run(context, _code_version(context)) as run:
        mlflow.log_params({f"shards.{k}": v for k, v in vars(p.shards).items()})
        tracking.log_input_table("deduplicated_corpus", corpus / "documents")
        mlflow.log_metrics({f"{name}.{k}": v for name, s in splits.items() for k, v in s.items() if isinstance(v, int)})
        mlflow.log_dict(index, "index.json")
        url = tracking.run_url(run)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "train_tokens": splits["train"]["tokens"],
            "validation_tokens": splits["validation"]["tokens"],
            "train_sequences": splits["train"]["sequences"],
            "sequence_length": index["sequence_length"],
            "tokens_by_source": dg.MetadataValue.json(tokens_by_source),
            "mlflow_run": dg.MetadataValue.url(url),
        },
        check_results=[dg.AssetCheckResult(check_name=SPLITS_COVER, passed=split_docs == corpus_docs,
                                           metadata={"corpus": corpus_docs, "splits": split_docs})],
    )


corpus_assets = [web_sources, code_sources, web_documents, code_documents, filtered_web, filtered_code,
                 deduplicated_corpus, tokenizer, pretraining_shards]
