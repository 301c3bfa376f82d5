"""The document table every corpus stage reads and writes, and the writers that keep excluded rows.

Kept documents:     id, text, source, uri, meta            (meta: a JSON object as text)
Excluded documents: id, text, source, uri, meta, reason    (reason: `<step>:<why>`)

Each stage folder holds `documents/*.parquet` and `excluded/*.parquet`; for every stage
kept + excluded = input, which the asset checks verify. `meta` is JSON text rather than a struct so
that every file of a table shares one schema whatever the sources put in it.

Steps mark a document for exclusion by setting `metadata["exclusion_reason"]`; `RouteExcluded`
then sends it to the exclusion writer, so readers never drop anything on their own.
"""

from __future__ import annotations

import json
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.readers.base import BaseReader
from datatrove.pipeline.writers import ParquetWriter

DOCUMENT_COLUMNS = ("id", "text", "source", "uri", "meta")
EXCLUDED_COLUMNS = DOCUMENT_COLUMNS + ("reason",)
# metadata keys that are columns of their own (or bookkeeping), never copied into `meta`
_RESERVED = {"source", "uri", "exclusion_reason", "filter_reason", "file_path"}

EXCLUSION_KEY = "exclusion_reason"


def mark_excluded(doc: Document, reason: str) -> Document:
    """Flag a document so that `RouteExcluded` writes it to the excluded table with `reason`."""
    doc.metadata[EXCLUSION_KEY] = reason
    return doc


def _meta_json(metadata: dict) -> str:
    return json.dumps({k: v for k, v in metadata.items() if k not in _RESERVED}, sort_keys=True, default=str)


def document_row(self, document: Document) -> dict:
    """ParquetWriter adapter: Document -> a row of the document table."""
    return {
        "id": document.id,
        "text": document.text,
        "source": document.metadata.get("source", ""),
        "uri": document.metadata.get("uri", ""),
        "meta": _meta_json(document.metadata),
    }


def _excluded_adapter(default_reason: str):
    def excluded_row(self, document: Document) -> dict:
        md = document.metadata
        why = md.get(EXCLUSION_KEY) or md.get("filter_reason")
        # `<step>:<why>` so one column answers both "which filter" and "which rule"
        reason = default_reason if not why else (why if why.startswith(default_reason) else f"{default_reason}:{why}")
        return {**document_row(self, document), "reason": reason}

    return excluded_row


def documents_writer(stage_dir: Path | str) -> ParquetWriter:
    return ParquetWriter(str(Path(stage_dir) / "documents"), output_filename="${rank}.parquet", adapter=document_row)


def exclusion_writer(stage_dir: Path | str, step: str) -> ParquetWriter:
    """A writer for the documents `step` removes; its rows carry reason `<step>` or `<step>:<why>`."""
    return ParquetWriter(
        str(Path(stage_dir) / "excluded"),
        output_filename=f"{step}_${{rank}}.parquet",
        adapter=_excluded_adapter(step),
    )


def _document_from_row(self, data: dict, path: str, id_in_file: int | str) -> dict:
    meta = json.loads(data.get("meta") or "{}")
    return {
        "text": data["text"],
        "id": data["id"],
        "metadata": {**meta, "source": data.get("source", ""), "uri": data.get("uri", "")},
    }


def documents_reader(stage_dir: Path | str) -> ParquetReader:
    """Read the kept documents of one stage.

    Files are listed in sorted order and dealt to tasks round-robin, so two pipelines reading the same
    folder with the same task count see the same documents in the same order (MinHash relies on it).
    """
    return ParquetReader(str(Path(stage_dir) / "documents"), adapter=_document_from_row, glob_pattern="*.parquet")


class ChainedReaders(PipelineStep):
    """Several readers as one: each task reads its shard of every reader, in order (dedup reads web + code)."""

    type = "📖 - READER"
    name = "🔗 chained readers"

    def __init__(self, readers: list[BaseReader]):
        super().__init__()
        self.readers = readers

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for reader in self.readers:
            for doc in reader.run(None, rank, world_size):
                self.stat_update("documents")
                yield doc


class RouteExcluded(BaseFilter):
    """Send documents an earlier step marked (`exclusion_reason`) to the excluded table."""

    name = "🚦 route excluded"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        reason = doc.metadata.get(EXCLUSION_KEY)
        return True if reason is None else (False, reason)


class NonEmptyText(BaseFilter):
    """Exclude documents left without text (a filter that edits text, like C4's, can empty one).

    NOTE: datatrove's readers silently skip rows with empty text, so an empty document written here
    would vanish from the next stage's count; it is excluded with a reason instead.
    """

    name = "🕳 non-empty text"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return bool(doc.text and doc.text.strip()) or (False, "empty_text")
