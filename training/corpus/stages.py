"""The corpus stages as datatrove pipelines: ingest, filter (web, code) and deduplicate.

Each function builds its pipeline, runs it on the configured executor and returns a `StageResult`
with the counts every asset reports and checks (kept, excluded by reason, input). Stage folders:

    <stage>/documents/*.parquet   kept documents          (schema.py)
    <stage>/excluded/*.parquet    excluded, with reason
    <stage>/work/                 intermediate files (dedup signatures, buckets, clusters)

Dedup runs datatrove's exact dedup (a 64-bit hash of the text) and then its four MinHash stages
(signatures, buckets, clusters, filter). The clusters are written as `clusters.parquet`
(kind, cluster, kept_id, removed_id) for DuckDB.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from datatrove.data import Document
from datatrove.pipeline.dedup import (
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.utils.hashing import HashConfig

from training.corpus.code_filters import CodeQualityFilter
from training.corpus.executors import run_stage
from training.corpus.minhash_verify import VerifyMinhashPairs
from training.corpus.readers import HtmlToText, MaxDocumentChars, SourceReader
from training.corpus.schema import (
    ChainedReaders,
    NonEmptyText,
    RouteExcluded,
    documents_reader,
    documents_writer,
    exclusion_writer,
)
from training.corpus.sources import SourceItem
from training.settings import CodeFiltersConfig, CorpusConfig, ExecutorConfig, MinhashSettings, WebFiltersConfig


@dataclass
class StageResult:
    stage_dir: Path
    input: int  # documents that entered the stage
    kept: int
    excluded_by_reason: dict[str, int]
    stats: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def excluded(self) -> int:
        return sum(self.excluded_by_reason.values())


# ---------------------------------------------------------------------------------------------
# table queries (DuckDB over the stage's parquet files)


def _glob(stage_dir: Path, table: str) -> str | None:
    folder = stage_dir / table
    return str(folder / "*.parquet") if folder.is_dir() and any(folder.glob("*.parquet")) else None


def count_documents(stage_dir: Path) -> int:
    files = _glob(stage_dir, "documents")
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{files}')").fetchall()[0][0] if files else 0


def excluded_by_reason(stage_dir: Path) -> dict[str, int]:
    files = _glob(stage_dir, "excluded")
    if not files:
        return {}
    rows = duckdb.sql(f"SELECT reason, count(*) FROM read_parquet('{files}') GROUP BY reason ORDER BY 2 DESC").fetchall()
    return {reason: n for reason, n in rows}


def count_by_source(stage_dir: Path, table: str = "documents") -> dict[str, int]:
    files = _glob(stage_dir, table)
    if not files:
        return {}
    rows = duckdb.sql(f"SELECT source, count(*) FROM read_parquet('{files}') GROUP BY source ORDER BY 1").fetchall()
    return dict(rows)


def _fresh(stage_dir: Path, logging_dir: Path) -> None:
    """Start a stage from nothing unless this run already began it (then datatrove resumes)."""
    if not logging_dir.exists() and stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)


def _result(stage_dir: Path, input_count: int, stats: dict, **extra) -> StageResult:
    return StageResult(stage_dir, input_count, count_documents(stage_dir), excluded_by_reason(stage_dir), stats, extra)


# ---------------------------------------------------------------------------------------------
# ingest


def ingest(kind: str, items: list[SourceItem], stage_dir: Path, corpus: CorpusConfig,
           executor: ExecutorConfig, logging_dir: Path) -> StageResult:
    """Source items -> documents (web: with HTML extraction). Input = every document or file read."""
    _fresh(stage_dir, logging_dir)
    pipeline = [SourceReader([i.to_dict() for i in items], kind, corpus.max_file_bytes)]
    if kind == "web":
        pipeline.append(HtmlToText(timeout=corpus.html_extraction_timeout))
    pipeline += [
        MaxDocumentChars(corpus.max_document_chars),
        RouteExcluded(exclusion_writer=exclusion_writer(stage_dir, "ingest")),
        NonEmptyText(exclusion_writer=exclusion_writer(stage_dir, "empty_text")),
        documents_writer(stage_dir),
    ]
    tasks = max(1, min(executor.tasks, len(items)))
    stats = run_stage(pipeline, executor, logging_dir, tasks=tasks, job_name=f"ingest_{kind}")
    read = stats.get(SourceReader.name, {}).get("documents", 0)
    return _result(stage_dir, read, stats)


# ---------------------------------------------------------------------------------------------
# filters


class TrustedSources:
    """Mixin for a datatrove filter: documents of `trusted_sources` pass it untouched.

    Each pass is counted in the filter's own stats (`trusted_source`), beside its forwarded and
    dropped counts; the filter keeps its name and exclusion writer. For text we generate on purpose
    (worked examples), which prose heuristics would mangle or drop.
    """

    def __init__(self, *args, trusted_sources: Iterable[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.trusted_sources = frozenset(trusted_sources)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("source") in self.trusted_sources:
            self.stat_update("trusted_source")
            return True
        return super().filter(doc)


class GopherQuality(TrustedSources, GopherQualityFilter):
    pass


class GopherRepetition(TrustedSources, GopherRepetitionFilter):
    pass


class C4Quality(TrustedSources, C4QualityFilter):
    pass


class FineWebQuality(TrustedSources, FineWebQualityFilter):
    pass


def web_filter_steps(cfg: WebFiltersConfig, stage_dir: Path) -> list:
    steps = []
    trusted = list(cfg.trusted_sources)
    if cfg.gopher_quality_enabled:
        steps.append(GopherQuality(**vars(cfg.gopher_quality), trusted_sources=trusted,
                                   exclusion_writer=exclusion_writer(stage_dir, "gopher_quality")))
    if cfg.gopher_repetition_enabled:
        steps.append(GopherRepetition(**vars(cfg.gopher_repetition), trusted_sources=trusted,
                                      exclusion_writer=exclusion_writer(stage_dir, "gopher_repetition")))
    if cfg.c4_enabled:
        steps.append(C4Quality(**vars(cfg.c4), trusted_sources=trusted, exclusion_writer=exclusion_writer(stage_dir, "c4")))
    if cfg.fineweb_enabled:
        steps.append(FineWebQuality(**vars(cfg.fineweb), trusted_sources=trusted,
                                    exclusion_writer=exclusion_writer(stage_dir, "fineweb")))
    return steps


def filter_documents(kind: str, input_dir: Path, stage_dir: Path, web: WebFiltersConfig, code: CodeFiltersConfig,
                     executor: ExecutorConfig, logging_dir: Path) -> StageResult:
    _fresh(stage_dir, logging_dir)
    if kind == "web":
        steps = web_filter_steps(web, stage_dir)
    else:
        steps = [CodeQualityFilter(code, exclusion_writer=exclusion_writer(stage_dir, "code_quality"))]
    pipeline = [
        documents_reader(input_dir),
        *steps,
        NonEmptyText(exclusion_writer=exclusion_writer(stage_dir, "empty_text")),
        documents_writer(stage_dir),
    ]
    stats = run_stage(pipeline, executor, logging_dir, job_name=f"filter_{kind}")
    return _result(stage_dir, count_documents(input_dir), stats)


# ---------------------------------------------------------------------------------------------
# dedup


def document_text(doc: Document) -> str:
    return doc.text


def _exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=document_text, hash_config=HashConfig(precision=64))


def deduplicate(input_dirs: list[Path], stage_dir: Path, minhash: MinhashSettings, executor: ExecutorConfig,
                logging_dir: Path) -> StageResult:
    """Exact dedup, then MinHash near-dedup, over all `input_dirs` together."""
    _fresh(stage_dir, logging_dir)
    work = stage_dir / "work"
    after_exact = work / "after_exact"
    exact = _exact_config()
    mh = MinhashConfig(n_grams=minhash.n_grams, num_buckets=minhash.num_buckets,
                       hashes_per_bucket=minhash.hashes_per_bucket, seed=minhash.seed)

    def readers():
        return ChainedReaders([documents_reader(d) for d in input_dirs])

    stats = {}
    stats["exact_signatures"] = run_stage(
        [readers(), ExactDedupSignature(str(work / "exact_sigs"), config=exact)],
        executor, logging_dir / "exact_1_signatures", job_name="exact_sigs")
    stats["exact_find"] = run_stage(
        [ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), config=exact)],
        executor, logging_dir / "exact_2_find", tasks=1, job_name="exact_find")
    stats["exact_filter"] = run_stage(
        [readers(), ExactDedupFilter(str(work / "exact_dups"), config=exact,
                                     exclusion_writer=exclusion_writer(stage_dir, "exact_duplicate")),
         documents_writer(after_exact)],
        executor, logging_dir / "exact_3_filter", job_name="exact_filter")
    stats["minhash_signatures"] = run_stage(
        [documents_reader(after_exact), MinhashDedupSignature(str(work / "minhash_sigs"), config=mh)],
        executor, logging_dir / "minhash_1_signatures", job_name="minhash_sigs")
    stats["minhash_buckets"] = run_stage(
        [MinhashDedupBuckets(str(work / "minhash_sigs"), str(work / "minhash_buckets"), config=mh)],
        executor, logging_dir / "minhash_2_buckets", tasks=mh.num_buckets, job_name="minhash_buckets")
    pairs = work / "minhash_buckets"
    if minhash.verify_threshold > 0:
        stats["minhash_verify"] = run_stage(
            [VerifyMinhashPairs(str(work / "minhash_sigs"), str(pairs), str(work / "minhash_verified"), mh,
                                minhash.verify_threshold)],
            executor, logging_dir / "minhash_2b_verify", tasks=1, job_name="minhash_verify")
        pairs = work / "minhash_verified"
    stats["minhash_clusters"] = run_stage(
        [MinhashDedupCluster(str(pairs), str(work / "minhash_remove"), config=mh,
                             save_cluster_id=True)],
        executor, logging_dir / "minhash_3_clusters", tasks=1, job_name="minhash_clusters")
    stats["minhash_filter"] = run_stage(
        [documents_reader(after_exact),
         MinhashDedupFilter(str(work / "minhash_remove"), load_cluster_ids=True,
                            exclusion_writer=exclusion_writer(stage_dir, "near_duplicate")),
         documents_writer(stage_dir)],
        executor, logging_dir / "minhash_4_filter", job_name="minhash_filter")
    clusters = write_clusters(stage_dir, after_exact)
    input_count = sum(count_documents(d) for d in input_dirs)
    return _result(stage_dir, input_count, stats, clusters=clusters)


def write_clusters(stage_dir: Path, after_exact: Path) -> int:
    """clusters.parquet: one row per removed document with the id of the document kept in its place."""
    excluded = _glob(stage_dir, "excluded")
    kept_after_exact = _glob(after_exact, "documents")
    final = _glob(stage_dir, "documents")
    out = stage_dir / "clusters.parquet"
    parts = []
    if excluded and kept_after_exact:
        # exact: the kept document is the one with the same text that survived
        parts.append(f"""
            SELECT 'exact' AS kind, md5(k.text) AS cluster, k.id AS kept_id, x.id AS removed_id
            FROM read_parquet('{excluded}') x JOIN read_parquet('{kept_after_exact}') k ON md5(x.text) = md5(k.text)
            WHERE x.reason = 'exact_duplicate'""")
    if excluded and final:
        # near: datatrove tags every member of a MinHash cluster with its id; one member stays
        parts.append(f"""
            SELECT 'near' AS kind, CAST(c AS VARCHAR) AS cluster, k.id AS kept_id, x.id AS removed_id
            FROM (SELECT id, json_extract(meta, '$.minhash_cluster_id')::BIGINT AS c
                  FROM read_parquet('{excluded}') WHERE reason = 'near_duplicate') x
            JOIN (SELECT id, json_extract(meta, '$.minhash_cluster_id')::BIGINT AS c2
                  FROM read_parquet('{final}')) k ON x.c = k.c2""")
    query = " UNION ALL ".join(parts) if parts else (
        "SELECT NULL::VARCHAR AS kind, NULL::VARCHAR AS cluster, NULL::VARCHAR AS kept_id, "
        "NULL::VARCHAR AS removed_id WHERE false")
    duckdb.sql(f"COPY ({query}) TO '{out}' (FORMAT parquet)")
    return duckdb.sql(f"SELECT count(DISTINCT cluster) FROM read_parquet('{out}')").fetchall()[0][0]
