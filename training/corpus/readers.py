"""Reading source items into documents, without ever dropping one silently.

`SourceReader` is a datatrove reader over a manifest of `SourceItem`s (see sources.py): each task
reads every `world_size`-th item, so the same manifest shards the same way on any executor. Each
format has a small parser; anything unreadable (a corrupt JSONL line, a non-UTF-8 or empty file, a
binary among code, a file over the size limit, an empty directory) becomes a document marked with
an `exclusion_reason`, which `RouteExcluded` writes to the stage's excluded table.

WARC files go through datatrove's own `WarcReader`; HTML (from WARC or `.html` files) is turned into
text by `HtmlToText`, which runs datatrove's Trafilatura extractor in its sandboxed process with a
per-document timeout, and excludes (rather than drops) what fails.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.extractors.base import ExtractorSandbox
from datatrove.pipeline.extractors.trafilatura import Trafilatura

from training.corpus.builtin import builtin_documents
from training.corpus.schema import EXCLUSION_KEY, mark_excluded
from training.corpus.sources import BUILTIN_SOURCES, SourceItem


def doc_id(uri: str) -> str:
    return hashlib.sha1(uri.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def _looks_binary(raw: bytes) -> bool:
    return b"\x00" in raw[:8192]


class SourceReader(PipelineStep):
    """Documents from a manifest of source items; `kind` is `web` or `code` (recorded in meta)."""

    type = "📖 - READER"
    name = "📚 source reader"

    def __init__(self, items: list[dict], kind: str, max_file_bytes: int):
        super().__init__()
        self.items = items
        self.kind = kind
        self.max_file_bytes = max_file_bytes

    # -- helpers ------------------------------------------------------------------------------
    def _doc(self, item: SourceItem, uri: str, text: str, **meta) -> Document:
        metadata = {"source": item.source, "uri": uri, "kind": self.kind, "format": item.format, **meta}
        if item.language:
            metadata["language"] = item.language
        return Document(text=text, id=doc_id(uri), metadata=metadata)

    def _excluded(self, item: SourceItem, uri: str, reason: str, text: str = "", **meta) -> Document:
        self.stat_update(f"excluded_{reason}")
        return mark_excluded(self._doc(item, uri, text, **meta), reason)

    def _read_bytes(self, item: SourceItem) -> bytes | Document:
        path = Path(item.path)
        try:
            size = path.stat().st_size
            if size > self.max_file_bytes:
                return self._excluded(item, item.path, "file_too_large", bytes_=size)
            raw = path.read_bytes()
            if path.name.endswith(".gz"):
                raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            return self._excluded(item, item.path, "unreadable_file", error=str(e))
        if not raw.strip():
            return self._excluded(item, item.path, "empty_file")
        return raw

    def _decode(self, item: SourceItem, raw: bytes) -> str | Document:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return self._excluded(item, item.path, "not_utf8", raw.decode("utf-8", "replace"), error=str(e))

    # -- formats ------------------------------------------------------------------------------
    def _text_file(self, item: SourceItem) -> DocumentsPipeline:
        raw = self._read_bytes(item)
        if isinstance(raw, Document):
            yield raw
            return
        if item.format == "code" and _looks_binary(raw):
            yield self._excluded(item, item.path, "binary", bytes_=len(raw))
            return
        text = self._decode(item, raw)
        yield text if isinstance(text, Document) else self._doc(item, item.path, text)

    def _jsonl(self, item: SourceItem) -> DocumentsPipeline:
        raw = self._read_bytes(item)
        if isinstance(raw, Document):
            yield raw
            return
        for lineno, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            uri = f"{item.path}#L{lineno}"
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield self._excluded(item, uri, "invalid_json", line.decode("utf-8", "replace"), error=str(e))
                continue
            yield self._record(item, uri, record)

    def _record(self, item: SourceItem, uri: str, record) -> Document:
        if not isinstance(record, dict):
            return self._excluded(item, uri, "not_an_object", json.dumps(record))
        text = record.get("text", record.get("content"))
        if not isinstance(text, str) or not text.strip():
            return self._excluded(item, uri, "missing_text", json.dumps(record, default=str))
        extra = {k: v for k, v in record.items() if k not in ("text", "content", "id", "metadata")}
        if isinstance(record.get("metadata"), dict):
            extra.update(record["metadata"])
        if record.get("id") is not None:
            extra["original_id"] = str(record["id"])
        return self._doc(item, uri, text, **extra)

    def _parquet(self, item: SourceItem) -> DocumentsPipeline:
        import pyarrow.parquet as pq

        try:
            pqf = pq.ParquetFile(item.path)
            row = 0
            for batch in pqf.iter_batches(batch_size=1000):
                for record in batch.to_pylist():
                    yield self._record(item, f"{item.path}#row{row}", record)
                    row += 1
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a corrupt file
            yield self._excluded(item, item.path, "unreadable_parquet", error=str(e))

    def _warc(self, item: SourceItem) -> DocumentsPipeline:
        from datatrove.pipeline.readers import WarcReader

        path = Path(item.path)
        reader = WarcReader(str(path.parent), compression="infer")
        try:
            for i, doc in enumerate(reader.read_file(path.name)):
                uri = doc.metadata.get("url") or f"{item.path}#record{i}"
                yield self._doc(item, uri, doc.text, format="html", url=doc.metadata.get("url", ""),
                                warc_date=str(doc.metadata.get("date", "")))
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt archive
            yield self._excluded(item, item.path, "unreadable_warc", error=str(e))

    def _builtin(self, item: SourceItem) -> DocumentsPipeline:
        for d in builtin_documents(item.format, item.options):
            if not d["text"].strip():
                yield self._excluded(item, d["uri"], "empty_text", **d["meta"])
            else:
                yield self._doc(item, d["uri"], d["text"], **d["meta"])

    def read_item(self, item: SourceItem) -> DocumentsPipeline:
        if item.format == "excluded":
            yield self._excluded(item, item.path, item.reason)
        elif item.format in ("text", "code", "html"):
            yield from self._text_file(item)
        elif item.format == "jsonl":
            yield from self._jsonl(item)
        elif item.format == "parquet":
            yield from self._parquet(item)
        elif item.format == "warc":
            yield from self._warc(item)
        elif item.format in BUILTIN_SOURCES:  # a built-in's own items (stdlib's are `code` files)
            yield from self._builtin(item)
        else:
            raise ValueError(f"unknown item format {item.format!r} for {item.path}")

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for index in range(rank, len(self.items), world_size):
            item = SourceItem(**self.items[index])
            self.stat_update("items")
            for doc in self.read_item(item):
                self.stat_update("documents")
                yield doc


class HtmlToText(PipelineStep):
    """Extract the main text of HTML documents with datatrove's Trafilatura extractor.

    Other documents pass through. A page that times out, crashes the extractor or yields no text is
    excluded with that reason (datatrove's own extractor step would drop it uncounted).
    """

    type = "🛢 - EXTRAC"
    name = "⛏ html to text"

    def __init__(self, timeout: float = 5.0):
        super().__init__()
        self.timeout = timeout
        self.extractor = Trafilatura(favour_precision=True, timeout=timeout)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with ExtractorSandbox(timeout=self.timeout, warmup_text="") as sandbox:
            for doc in data:
                if doc.metadata.get("format") != "html" or EXCLUSION_KEY in doc.metadata:
                    yield doc
                    continue
                self.stat_update("html")
                try:
                    text = sandbox.process_document(doc.text, self.extractor.extract)
                except TimeoutError:
                    yield mark_excluded(doc, "html_extraction_timeout")
                    continue
                except EOFError:
                    yield mark_excluded(doc, "html_extractor_crashed")
                    continue
                except Exception as e:  # noqa: BLE001 - trafilatura's own errors vary
                    doc.metadata["error"] = str(e)
                    yield mark_excluded(doc, "html_extraction_error")
                    continue
                if not text or not text.strip():
                    yield mark_excluded(doc, "html_no_text")
                    continue
                doc.metadata["html_chars"] = len(doc.text)
                doc.text = text
                self.stat_update("extracted")
                yield doc


class MaxDocumentChars(PipelineStep):
    """Exclude documents longer than `max_chars` before any filter spends time on them."""

    type = "🔻 - FILTER"
    name = "📏 size guard"

    def __init__(self, max_chars: int):
        super().__init__()
        self.max_chars = max_chars

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            if EXCLUSION_KEY not in doc.metadata and len(doc.text) > self.max_chars:
                doc.metadata["chars"] = len(doc.text)
                mark_excluded(doc, "too_large")
                self.stat_update("too_large")
            yield doc
