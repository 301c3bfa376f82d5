"""Bad input never crashes a run and is never lost: each case is excluded with its reason."""

import json

import duckdb
import pytest

from training.corpus import stages
from training.corpus.sources import SourceError, resolve_sources
from training.settings import CorpusConfig

GOOD = "A perfectly ordinary sentence about the weather and the sea. " * 20


@pytest.fixture
def bad_sources(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "docs.jsonl").write_text("\n".join([
        json.dumps({"text": GOOD, "id": "a"}),
        '{"text": "unterminated',  # corrupt line
        json.dumps({"title": "no text field"}),
        json.dumps({"text": GOOD + " second", "id": "b"}),
    ]) + "\n")
    (web / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 50)
    (web / "empty.md").write_text("")
    (web / "empty_dir").mkdir()
    (web / "enormous.txt").write_text("word " * 60_000)  # one 300,000-character line
    (web / "page.html").write_text(f"<html><body><article><p>{GOOD}</p></article></body></html>")
    (web / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    code = tmp_path / "code"
    code.mkdir()
    (code / "ok.py").write_text("def f(x):\n    return x + 1\n" * 10)
    (code / "blob.py").write_bytes(b"\x00\x01\x02binary\x00" * 100)  # a binary with a code extension
    (code / "data.bin").write_bytes(b"\x00" * 100)
    return web, code


def _excluded(stage_dir):
    return dict(duckdb.sql(f"SELECT uri, reason FROM read_parquet('{stage_dir}/excluded/*.parquet')").fetchall())


def test_each_bad_web_input_is_excluded_with_its_reason(tmp_path, bad_sources, serial_executor):
    web, _ = bad_sources
    cfg = CorpusConfig(max_document_chars=100_000)
    items = resolve_sources("web", cfg, [str(web)])
    result = stages.ingest("web", items, tmp_path / "out", cfg, serial_executor, tmp_path / "logs")

    reasons = _excluded(tmp_path / "out")
    by_suffix = {uri.rsplit("/", 1)[-1]: r for uri, r in reasons.items()}
    assert by_suffix["docs.jsonl#L2"] == "ingest:invalid_json"
    assert by_suffix["docs.jsonl#L3"] == "ingest:missing_text"
    assert by_suffix["latin1.txt"] == "ingest:not_utf8"
    assert by_suffix["empty.md"] == "ingest:empty_file"
    assert by_suffix["empty_dir"] == "ingest:empty_directory"
    assert by_suffix["enormous.txt"] == "ingest:too_large"
    assert by_suffix["photo.png"] == "ingest:unsupported_format"
    # kept: two JSONL documents and the HTML page's extracted text
    assert result.kept == 3
    assert result.input == result.kept + result.excluded == 10
    html = duckdb.sql(f"SELECT text FROM read_parquet('{tmp_path}/out/documents/*.parquet') WHERE uri LIKE '%page.html'").fetchall()
    assert "ordinary sentence" in html[0][0] and "<p>" not in html[0][0]


def test_binaries_among_code_are_excluded(tmp_path, bad_sources, serial_executor):
    _, code = bad_sources
    cfg = CorpusConfig()
    items = resolve_sources("code", cfg, [str(code)])
    result = stages.ingest("code", items, tmp_path / "out", cfg, serial_executor, tmp_path / "logs")
    by_suffix = {uri.rsplit("/", 1)[-1]: r for uri, r in _excluded(tmp_path / "out").items()}
    assert by_suffix == {"blob.py": "ingest:binary", "data.bin": "ingest:not_source_code"}
    assert result.kept == 1
    meta = duckdb.sql(f"SELECT meta FROM read_parquet('{tmp_path}/out/documents/*.parquet')").fetchall()[0][0]
    assert json.loads(meta)["language"] == "python"


def test_missing_source_path_fails_before_work_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError, match="nowhere.*does not exist; accepted"):
        resolve_sources("web", CorpusConfig(), [str(missing)])
    with pytest.raises(SourceError, match="matches no file"):
        resolve_sources("code", CorpusConfig(), [str(tmp_path / "*.py")])


def test_source_cap_keeps_overflow_as_excluded(tmp_path):
    for i in range(5):
        (tmp_path / f"f{i}.txt").write_text(GOOD)
    items = resolve_sources("web", CorpusConfig(max_documents_per_source=3), [str(tmp_path)])
    assert sum(i.format == "text" for i in items) == 3
    assert [i.reason for i in items if i.format == "excluded"] == ["over_source_limit"] * 2
