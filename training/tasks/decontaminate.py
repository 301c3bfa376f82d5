"""Held-out task contamination: which held-out prompts appear in the pretraining corpus.

Units. Text is lowercased and cut into words and single symbols (`\\w+|[^\\w\\s]`): digits and
operators are kept, since `3 + 5` and `3 * 5` are different questions.

Rule. A prompt of at most `whole_prompt_tokens` words is contaminated when it appears whole in a
document; a longer one when any of its `n`-grams does (13, the window of GPT-3's contamination
study, and common practice since). Why the whole prompt for short ones: a generated prompt shares
its fixed wording ("How many apples does Tom have now?") with every other instance of its template,
and so with the train instances in the worked examples of the corpus. A partial n-gram hit on it
means "same template", which is by design, not "same question"; only the whole prompt names the
held-out instance. Generated prompts are at most ~40 words and symbols, so with the default of 48
they are all checked whole; long free-text questions (GSM8K, MATH) get the 13-gram rule.

Why not datatrove's `NGramsDecontFilter`: its default normalization maps every digit to 0 and
drops punctuation (every instance of an arithmetic template becomes one string), it reports only
the first match of a document, and its index builder needs lighteval. The scan here indexes the
probes by their first two words and walks each document once.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import islice
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow.parquet as pq

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def probes(prompt: str, n: int, whole_prompt_tokens: int) -> list[tuple[str, ...]]:
    """The word sequences whose presence in a document contaminates `prompt`."""
    toks = words(prompt)
    if len(toks) <= max(n, whole_prompt_tokens):
        return [tuple(toks)] if toks else []
    return list({tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)})


def contamination(heldout_prompts: Sequence[str] | Mapping[str, str], corpus_dir: Path, n: int = 13,
                  whole_prompt_tokens: int = 48, max_examples: int = 20) -> dict:
    """Share of held-out prompts found in `corpus_dir/documents/*.parquet`, with examples.

    `heldout_prompts`: the prompts, or task id -> prompt. Returns `tasks`, `contaminated`,
    `share`, `contaminated_by_source` (tasks per source of the first matching document),
    `contaminated_ids` and up to `max_examples` examples (task, prompt, matched words, document).
    """
    items = list(heldout_prompts.items()) if isinstance(heldout_prompts, Mapping) else list(enumerate(heldout_prompts))
    index: dict[tuple[str, str], list[tuple[tuple[str, ...], int]]] = {}  # first two words -> probes
    singles: dict[str, list[int]] = {}
    for i, (_, prompt) in enumerate(items):
        for gram in probes(prompt, n, whole_prompt_tokens):
            if len(gram) == 1:
                singles.setdefault(gram[0], []).append(i)
            else:
                index.setdefault(gram[:2], []).append((gram, i))
    files = sorted((Path(corpus_dir) / "documents").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"contamination: no documents/*.parquet under {corpus_dir}; expected the "
                                f"deduplicated corpus (columns id, text, source, uri, meta)")
    found: dict[int, dict] = {}
    documents = 0
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(columns=["id", "text", "source"], batch_size=500):
            for doc_id, text, source in zip(*(batch.column(c).to_pylist() for c in ("id", "text", "source"))):
                documents += 1
                _scan(words(text), index, singles, found, doc_id, source)
    hits = sorted(found)
    return {
        "tasks": len(items),
        "contaminated": len(hits),
        "share": len(hits) / len(items) if items else 0.0,
        "n": n,
        "whole_prompt_tokens": whole_prompt_tokens,
        "documents": documents,
        "contaminated_by_source": dict(Counter(found[i]["source"] for i in hits)),
        "contaminated_ids": [items[i][0] for i in hits],
        "examples": [{"task": items[i][0], "prompt": items[i][1], **found[i]} for i in hits[:max_examples]],
    }


def _scan(toks: list[str], index: dict, singles: dict[str, list[int]], found: dict[int, dict], doc_id: str,
          source: str) -> None:
    """Record, for each probe found in `toks` whose task has no match yet, where it was found."""
    get = index.get
    for pos, key in enumerate(zip(toks, islice(toks, 1, None))):  # every position's first two words
        candidates = get(key)
        if candidates:
            for gram, task in candidates:
                if task not in found and tuple(toks[pos : pos + len(gram)]) == gram:
                    found[task] = {"match": " ".join(gram), "document": doc_id, "source": source}
    for word in singles.keys() & set(toks) if singles else ():  # one-word prompts
        for task in singles[word]:
            found.setdefault(task, {"match": word, "document": doc_id, "source": source})
