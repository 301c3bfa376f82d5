"""Where the corpus comes from: source entries resolved to a manifest of items, and their fingerprint.

A source entry is a file, a directory or a glob, or one of the built-in sources a Python machine
already has:

  python-metadata   the long descriptions of the installed distributions (web-like prose)
  pydoc-topics      the standard library's documentation topics (web-like prose)
  stdlib            the Python standard library's source (code)
  worked-examples   generated reasoning tasks with worked solutions, train split only (web-like;
                    sized by `corpus.worked_examples`)

`SEEKFLOW_WEB_SOURCES` / `SEEKFLOW_CODE_SOURCES` take comma-separated entries. With none set, web
reads /usr/share/doc (where it exists), python-metadata, pydoc-topics and worked-examples; code
reads stdlib.

Resolution is cheap (paths and sizes) and never reads file contents; the fingerprint hashes the
contents, so a changed file changes the source's Dagster DataVersion and marks everything downstream
stale. A missing path fails here, before any work, naming the entry and what is accepted.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

from training.settings import CorpusConfig

WEB_SOURCES_ENV = "SEEKFLOW_WEB_SOURCES"
CODE_SOURCES_ENV = "SEEKFLOW_CODE_SOURCES"
BUILTIN_SOURCES = {"python-metadata": "web", "pydoc-topics": "web", "worked-examples": "web", "stdlib": "code"}

# formats a web source may hold; everything else found in a directory is excluded as unsupported
WEB_SUFFIX_FORMATS = {
    ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".parquet": "parquet",
    ".warc": "warc", ".warc.gz": "warc", ".html": "html", ".htm": "html", ".html.gz": "html",
}


class SourceError(ValueError):
    """A source entry that cannot be read; the message names it and what is accepted."""


@dataclass(frozen=True)
class SourceItem:
    """One unit of reading: a file (or a built-in's whole content) of one source entry."""

    source: str  # the entry as configured: a path, glob or built-in name
    path: str  # file path, or `<builtin>` for built-ins, or a directory for `empty_directory`
    format: str  # jsonl | parquet | warc | html | text | code | python-metadata | pydoc-topics | excluded
    reason: str = ""  # for format `excluded`: why the path is not read (unsupported_format, ...)
    language: str = ""  # for code
    options: str = ""  # for a configurable built-in (worked-examples): its settings as JSON

    def to_dict(self) -> dict:
        return asdict(self)


def default_web_sources() -> list[str]:
    entries = ["/usr/share/doc"] if Path("/usr/share/doc").is_dir() else []
    return entries + ["python-metadata", "pydoc-topics", "worked-examples"]


def default_code_sources() -> list[str]:
    return ["stdlib"]


def configured_sources(kind: str) -> list[str]:
    """The entries for `kind` (web or code): from the environment, else the defaults."""
    env = WEB_SOURCES_ENV if kind == "web" else CODE_SOURCES_ENV
    raw = os.environ.get(env, "").strip()
    if raw:
        return [e.strip() for e in raw.split(",") if e.strip()]
    return default_web_sources() if kind == "web" else default_code_sources()


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _web_format(path: Path, cfg: CorpusConfig) -> str | None:
    name = path.name
    for suffix, fmt in WEB_SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    plain = name[:-3] if name.endswith(".gz") else name
    if any(plain.endswith(s) for s in cfg.text_suffixes) or plain.split(".")[0] in cfg.text_filenames:
        return "text"
    return None


def _code_language(path: Path, cfg: CorpusConfig) -> str | None:
    return cfg.code_extensions.get(path.suffix)


def _classify(path: Path, kind: str, source: str, cfg: CorpusConfig) -> SourceItem:
    if kind == "web":
        fmt = _web_format(path, cfg)
        if fmt is None:
            return SourceItem(source, str(path), "excluded", reason="unsupported_format")
        return SourceItem(source, str(path), fmt)
    language = _code_language(path, cfg)
    if language is None:
        return SourceItem(source, str(path), "excluded", reason="not_source_code")
    return SourceItem(source, str(path), "code", language=language)


def _walk(root: Path, kind: str, cfg: CorpusConfig) -> tuple[list[Path], list[Path]]:
    """Files under `root`, and the directories (root included) that hold nothing at all."""
    files, empty = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        if kind == "code":
            dirnames[:] = [d for d in dirnames if d not in cfg.code_exclude_dirs]
        dirnames.sort()
        if not dirnames and not filenames:
            empty.append(Path(dirpath))
        files.extend(Path(dirpath) / f for f in sorted(filenames))
    return files, empty


def _sample_key(item: SourceItem) -> str:
    # a hash order spreads a capped sample over the whole tree rather than its first letters
    return hashlib.sha1(item.path.encode()).hexdigest()


def resolve_entry(entry: str, kind: str, cfg: CorpusConfig) -> list[SourceItem]:
    """Items of one entry. Files matching no known format are kept as `excluded` items (counted)."""
    if entry in BUILTIN_SOURCES:
        if BUILTIN_SOURCES[entry] != kind:
            raise SourceError(f"built-in source {entry!r} is a {BUILTIN_SOURCES[entry]} source, not {kind}")
        if entry == "stdlib":
            return [SourceItem(entry, i.path, i.format, i.reason, i.language) for i in resolve_entry(str(stdlib_dir()), kind, cfg)]
        if entry == "worked-examples":
            if cfg.worked_examples.examples <= 0:
                return [SourceItem(entry, f"<{entry}>", "excluded", reason="disabled")]
            options = json.dumps(asdict(cfg.worked_examples), sort_keys=True)
            return [SourceItem(entry, f"<{entry}>", entry, options=options)]
        return [SourceItem(entry, f"<{entry}>", entry)]
    if any(ch in entry for ch in "*?["):
        paths = sorted(Path(p) for p in glob.glob(entry, recursive=True))
        if not paths:
            raise SourceError(f"{kind} source {entry!r}: the glob matches no file")
    else:
        path = Path(entry).expanduser()
        if not path.exists():
            raise SourceError(
                f"{kind} source {entry!r} does not exist; accepted: an existing file, directory or glob, "
                f"or a built-in ({', '.join(k for k, v in BUILTIN_SOURCES.items() if v == kind)})"
            )
        paths = [path]
    files: list[Path] = []
    empty_dirs: list[Path] = []
    for p in paths:
        if p.is_dir():
            found, empty = _walk(p, kind, cfg)
            files.extend(found)
            empty_dirs.extend(empty)
        elif p.is_file():
            files.append(p)
    items = [_classify(f, kind, entry, cfg) for f in files]
    items += [SourceItem(entry, str(d), "excluded", reason="empty_directory") for d in empty_dirs]
    return items


def resolve_sources(kind: str, cfg: CorpusConfig, entries: list[str] | None = None) -> list[SourceItem]:
    """Every item of every entry of `kind`, capped per entry by `max_documents_per_source`.

    The cap counts readable items only; items excluded at resolution are always listed, so the
    stage's excluded table accounts for every file found.
    """
    entries = entries if entries is not None else configured_sources(kind)
    if not entries:
        raise SourceError(f"no {kind} source configured; set {WEB_SOURCES_ENV if kind == 'web' else CODE_SOURCES_ENV}")
    manifest: list[SourceItem] = []
    for entry in entries:
        items = resolve_entry(entry, kind, cfg)
        readable = sorted((i for i in items if i.format != "excluded"), key=_sample_key)
        skipped = [i for i in items if i.format == "excluded"]
        if cfg.max_documents_per_source >= 0 and len(readable) > cfg.max_documents_per_source:
            over = readable[cfg.max_documents_per_source:]
            readable = readable[: cfg.max_documents_per_source]
            skipped += [SourceItem(i.source, i.path, "excluded", reason="over_source_limit") for i in over]
        manifest += sorted(readable, key=lambda i: i.path) + sorted(skipped, key=lambda i: i.path)
    return manifest


def fingerprint(items: list[SourceItem]) -> str:
    """A content hash of everything the items would read: the DataVersion of a source."""
    from training.corpus.builtin import builtin_documents  # local: imports every distribution's metadata

    h = hashlib.blake2b(digest_size=16)
    for item in sorted(items, key=lambda i: (i.source, i.path)):
        h.update(f"{item.source}\0{item.path}\0{item.format}\0{item.reason}\0".encode())
        if item.format in BUILTIN_SOURCES:
            for doc in builtin_documents(item.format, item.options):
                h.update(doc["uri"].encode() + b"\0" + doc["text"].encode("utf-8", "replace"))
        elif item.format != "excluded":
            try:
                with open(item.path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError as e:  # unreadable now: the reader will exclude it; the error is part of the version
                h.update(f"unreadable:{e.errno}".encode())
    return h.hexdigest()

