"""Small corpora with planted exact and near duplicates, written the way users give sources."""

from __future__ import annotations

import json
import random
from pathlib import Path

STOP = ["the", "and", "of", "to", "in", "that", "is", "with", "for", "as", "on", "was"]


def _vocabulary(rng: random.Random, n: int = 2000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ter", "san", "vo", "rel", "du", "pim", "sor", "na", "ble", "quo", "fen", "tri"]
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))))
    return sorted(words)


def prose(rng: random.Random, vocab: list[str], sentences: int = 24) -> str:
    """English-shaped prose of random words: passes Gopher, C4 and FineWeb, shares no 5-grams by chance."""
    lines = []
    for _ in range(sentences // 3):
        sent = []
        for _ in range(3):
            words = [rng.choice(vocab) if i % 3 else rng.choice(STOP) for i in range(12)]
            sent.append(" ".join(words).capitalize() + ".")
        lines.append(" ".join(sent))
    return "\n".join(lines)


def near_copy(rng: random.Random, text: str, vocab: list[str], edits: int) -> str:
    """Replace `edits` words: each touches at most 5 five-grams, so Jaccard stays high."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), edits):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def shingles(text: str, n: int = 5) -> set:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def planted_corpus(seed: int = 0, unique: int = 300, exact: int = 30, near: int = 60, max_edits: int = 4):
    """Documents with labels: ('unique', i), ('exact', i of original), ('near', i of original)."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    docs = [(f"u{i}", prose(rng, vocab), "unique") for i in range(unique)]
    originals = rng.sample(range(unique), exact + near)
    for j, i in enumerate(originals[:exact]):
        docs.append((f"x{j}-of-u{i}", docs[i][1], "exact"))
    for j, i in enumerate(originals[exact:]):
        docs.append((f"n{j}-of-u{i}", near_copy(rng, docs[i][1], vocab, rng.randint(1, max_edits)), "near"))
    rng.shuffle(docs)
    return docs


def write_jsonl(path: Path, docs: list[tuple[str, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for doc_id, text, label in docs:
            f.write(json.dumps({"id": doc_id, "text": text, "label": label}) + "\n")


def half_similar_pairs(seed: int = 0, pairs: int = 150):
    """Pairs of documents sharing two thirds of their words in order: 5-gram Jaccard just under 0.5."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    docs = []
    for i in range(pairs):
        a = prose(rng, vocab, sentences=30).split(" ")
        cut = (2 * len(a)) // 3
        b = a[:cut] + prose(rng, vocab, sentences=30).split(" ")[: len(a) - cut]
        docs += [(f"p{i}a", " ".join(a), "half"), (f"p{i}b", " ".join(b), "half")]
    return docs
