"""benchmarks/bench_pretrain.py `code`: real source code as token shards, for a loss comparison that does not saturate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer


def sources(root: Path) -> dict[str, str]:
    """Twenty distinct modules, a vendored copy of one, an empty one and one that is not UTF-8."""
    texts = {f"pkg/mod{i}.py": f'"""Module {i}: helpers for case {i}."""\n\n\ndef helper_{i}(x, y={i}):\n'
                               f'    """Return x scaled by {i} and shifted by y."""\n    return x * {i} + y\n' * 3
             for i in range(20)}
    texts["vendored/mod3.py"] = texts["pkg/mod3.py"]
    texts["pkg/__init__.py"] = "\n"
    for name, text in texts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "pkg" / "latin1.py").write_bytes("# caf\u00e9\n".encode("latin-1"))
    return texts


def split_documents(shards: Path, split: str, tokenizer: Tokenizer) -> list[str]:
    tokens = np.fromfile(next((shards / split).glob("*.ds")), dtype="<u2").tolist()
    ends = np.fromfile(next((shards / split).glob("*.ds.index")), dtype="<u8").tolist()
    eos = tokenizer.token_to_id("<|end_of_text|>")
    docs, start = [], 0
    for end in ends:
        assert tokens[end - 1] == eos  # every document ends with EOS, as DocumentTokenizer writes it
        docs.append(tokenizer.decode(tokens[start:end - 1]))
        start = end
    return docs


def test_code_shards_hold_every_source_once_split_without_overlap_and_count_what_was_dropped(bench, tmp_path):
    texts = sources(tmp_path / "src")
    shards = bench.make_code_data(tmp_path / "out", [tmp_path / "src", tmp_path / "src" / "pkg"], vocab=400,
                                  seq=16, train=20, validation=4)
    index = json.loads((shards / "index.json").read_text())
    # 23 files: 20 kept, the vendored copy a duplicate, one empty, one unreadable; pkg/ inside src/ read once
    assert {k: index["source"][k] for k in ("files", "documents", "duplicates", "empty", "unreadable")} == \
        {"files": 23, "documents": 20, "duplicates": 1, "empty": 1, "unreadable": 1}
    # and each one dropped is listed with its reason
    src = (tmp_path / "src").resolve()  # the paths are the resolved roots'
    dropped = {Path(d["path"]).relative_to(src).as_posix(): d for d in
               map(json.loads, (shards / "dropped.jsonl").read_text().splitlines())}
    assert {k: d["reason"] for k, d in dropped.items()} == \
        {"vendored/mod3.py": "duplicate", "pkg/__init__.py": "empty", "pkg/latin1.py": "unreadable"}
    assert dropped["vendored/mod3.py"]["detail"] == f"of {src / 'pkg' / 'mod3.py'}"
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer" / "tokenizer.json"))
    validation, train = (split_documents(shards, s, tokenizer) for s in ("validation", "train"))
    assert not set(validation) & set(train)
    assert set(validation) | set(train) <= set(texts.values())  # byte-level BPE decodes to the exact source
    for split, wanted in (("validation", 4), ("train", 20)):
        assert index["splits"][split]["sequences"] >= wanted
    # the trainer's own input checks accept it
    from training.pretrain import check_inputs
    from training.settings import load_profile
    check_inputs(load_profile("tiny", {}), shards, tmp_path / "out" / "tokenizer", world_size=1)
    # the same sources give the same shards
    again = bench.make_code_data(tmp_path / "again", [tmp_path / "src"], vocab=400, seq=16, train=20, validation=4)
    for split in ("validation", "train"):
        assert next((again / split).glob("*.ds")).read_bytes() == next((shards / split).glob("*.ds")).read_bytes()


def test_code_data_refuses_too_little_text_and_a_missing_folder_naming_them(bench, tmp_path):
    sources(tmp_path / "src")
    with pytest.raises(ValueError, match=r"--source .*src: 20 documents.*ran out at train"):
        bench.make_code_data(tmp_path / "out", [tmp_path / "src"], vocab=400, seq=16, train=10_000, validation=4)
    with pytest.raises(FileNotFoundError, match=r"--source .*nowhere: not a folder"):
        bench.make_code_data(tmp_path / "out", [tmp_path / "nowhere"], vocab=400, seq=16, train=4, validation=4)
