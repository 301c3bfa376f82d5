"""Non-reasoning SFT examples built from the corpus, with answers the documents themselves state.

R1's SFT mixed about 600k reasoning samples with 200k non-reasoning ones (writing, factual QA,
translation) taken from DeepSeek-V3's SFT data or written by V3. Seekflow has no teacher model to
write answers, so a general example here is one whose answer can be read off a document:

| kind | prompt | reference (the answer) |
| --- | --- | --- |
| docstring | "What does this Python function do?" + a function, its docstring removed | the docstring's first sentence |
| function_name | "Which function in this code does the following: <summary>?" + 2-4 functions, docstrings removed | the name of the function whose docstring that summary opens |
| continuation | 'Complete the sentence: "<its first half> ..."' for a sentence of a prose document | the second half |

Responses use the R1 format, `<think>short</think> <answer>reference</answer>`, so the format reward
applies to them as to every other response. The think is a templated sentence that states only what
the prompt shows (the function's name and parameters, the names on offer, where the sentence
stops): the model is never taught to claim reasoning it did not do.

Limits, said plainly: a docstring's first sentence is what its author wrote, often terse ("Return
self."); a sentence has many valid continuations, so the word-F1 reward of these prompts
(training/rewards/general.py) is noisy for that kind; and all of it comes from the corpus the model
was pretrained on, so these examples teach the answer format on non-reasoning prompts more than
they teach facts.

Every candidate that fails a check (prompt or reference too long, a reference that the prompt
already contains, special tokens, a repeated prompt, a malformed response) is returned with its
reason. Documents holding special tokens (the worked-examples chats) are skipped whole and counted.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from training.corpus.tokenizer import SPECIAL_TOKENS
from training.rewards.format import format_reward
from training.settings import SFTDataConfig
from training.tasks.format import response as r1_response

GENERAL_KINDS = ("docstring", "function_name", "continuation")
PER_DOCUMENT = 2  # candidates of each kind taken from one document (spread over many documents)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CODE_CHARS = re.compile(r"[{}<>=_|\\`$#@\[\]]")


def example_id(kind: str, doc_id: str, prompt: str) -> str:
    return f"general-{kind}-" + hashlib.blake2b(f"{doc_id}\0{prompt}".encode(), digest_size=8).hexdigest()


def _row(kind: str, doc_id: str, prompt: str, think: str, reference: str) -> dict:
    return {"id": example_id(kind, doc_id, prompt), "source": "general", "kind": "general", "family": kind,
            "task_id": doc_id, "prompt": prompt, "response": r1_response(think, reference), "answer": reference,
            "reference": reference}


def first_sentence(docstring: str) -> str | None:
    """The first sentence of a docstring's first paragraph, whitespace collapsed; None when it is not
    a sentence of at least 3 words ending in a full stop."""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    sentence = _SENTENCE_END.split(paragraph)[0].strip()
    if len(sentence.split()) < 3 or not sentence.endswith(".") or not sentence[0].isalpha():
        return None
    return sentence


def python_functions(text: str) -> list[dict]:
    """Functions (methods too) with a usable docstring: name, parameters, code without the docstring."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    lines = text.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.body) < 2:
            continue  # a function that is only its docstring has nothing to explain
        doc = ast.get_docstring(node)
        summary = first_sentence(doc) if doc else None
        if summary is None:
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        drop = set(range(node.body[0].lineno, node.body[0].end_lineno + 1))
        code = "\n".join(lines[i - 1] for i in range(first, node.end_lineno + 1) if i not in drop)
        params = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
        out.append({"name": node.name, "params": params, "code": textwrap.dedent(code).strip("\n"),
                    "summary": summary})
    return out


def prose_sentences(text: str) -> list[str]:
    """Sentences of 8 to 40 words that open with a capital letter and end with a full stop after a
    word of 3 letters or more (not an initial: "David E."), mostly in lower case (not a licence's
    capitals), without code characters."""
    out = []
    for s in _SENTENCE_END.split(" ".join(text.split())):
        words = s.split()
        letters = [c for c in s if c.isalpha()]
        if (8 <= len(words) <= 40 and s[0].isupper() and s.endswith(".") and len(words[-1].strip(".")) >= 3
                and sum(c.isupper() for c in letters) <= 0.2 * len(letters) and not _CODE_CHARS.search(s)):
            out.append(s)
    return out


def docstring_example(doc_id: str, fn: dict) -> dict:
    params = ", ".join(fn["params"]) or "no parameters"
    prompt = f"What does this Python function do? Answer in one sentence.\n```python\n{fn['code']}\n```"
    think = f"The code defines {fn['name']} with {params}. I read what its body does and say it in one sentence."
    return _row("docstring", doc_id, prompt, think, fn["summary"])


def function_name_example(doc_id: str, fns: list[dict], target: int) -> dict:
    names = ", ".join(f["name"] for f in fns)
    code = "\n\n".join(f["code"] for f in fns)
    prompt = (f"Which function in this code does the following: {fns[target]['summary']}\n"
              f"```python\n{code}\n```\nGive its name.")
    think = f"The code defines {names}. I match the description to each function's name and body."
    return _row("function_name", doc_id, prompt, think, fns[target]["name"])


def continuation_example(doc_id: str, sentence: str) -> dict:
    words = sentence.split()
    cut = len(words) // 2
    head, tail = " ".join(words[:cut]), " ".join(words[cut:])
    prompt = f'Complete the sentence: "{head} ..."'
    think = f'The sentence stops after "{" ".join(words[max(0, cut - 3):cut])}". I finish it in the same register.'
    return _row("continuation", doc_id, prompt, think, tail)


def check(row: dict, cfg: SFTDataConfig) -> str | None:
    """Why a candidate cannot be used, or None."""
    if len(row["prompt"]) > cfg.general_max_prompt_chars:
        return f"prompt_too_long:{len(row['prompt'])}>{cfg.general_max_prompt_chars}"
    if len(row["reference"]) > cfg.general_max_reference_chars:
        return f"reference_too_long:{len(row['reference'])}>{cfg.general_max_reference_chars}"
    if any(t in row["prompt"] or t in row["reference"] for t in SPECIAL_TOKENS):
        return "special_token"  # the think is built from the prompt's words; the tags are ours
    if format_reward(row["response"]) < 1.0:
        return "format"
    if row["family"] != "function_name" and row["reference"].lower() in row["prompt"].lower():
        return "answer_in_prompt"  # e.g. a comment in the code that repeats the docstring
    return None


def _is_python(doc: dict) -> bool:
    try:
        meta = json.loads(doc.get("meta") or "{}")
    except json.JSONDecodeError:
        meta = {}
    return meta.get("language") == "python" or str(doc.get("uri", "")).endswith(".py")


def document_candidates(doc: dict, kinds: list[str], rng: random.Random) -> Iterator[dict]:
    """At most PER_DOCUMENT candidates of each kind from one document."""
    if _is_python(doc):
        fns = python_functions(doc["text"])
        if "docstring" in kinds:
            for fn in rng.sample(fns, min(PER_DOCUMENT, len(fns))):
                yield docstring_example(doc["id"], fn)
        if "function_name" in kinds and len(fns) >= 2:
            for _ in range(min(PER_DOCUMENT, len(fns) // 2)):
                group = rng.sample(fns, min(len(fns), rng.randint(2, 4)))
                if len({f["name"] for f in group}) == len(group) and len({f["summary"] for f in group}) == len(group):
                    yield function_name_example(doc["id"], group, rng.randrange(len(group)))
        try:  # a module docstring is prose too
            prose = ast.get_docstring(ast.parse(doc["text"])) or ""
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            prose = ""
    else:
        prose = doc["text"]
    if "continuation" in kinds:
        sentences = prose_sentences(prose)
        for s in rng.sample(sentences, min(PER_DOCUMENT, len(sentences))):
            yield continuation_example(doc["id"], s)


def _documents(corpus_dir: Path) -> Iterator[dict]:
    """The corpus documents, each file's in the order of a hash of their id (stable, spread out)."""
    files = sorted((Path(corpus_dir) / "documents").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{corpus_dir}/documents/*.parquet not found: expected the deduplicated_corpus "
                                "folder (documents: id, text, source, uri, meta)")
    for f in files:
        rows = pq.read_table(f, columns=["id", "text", "source", "uri", "meta"]).to_pylist()
        yield from sorted(rows, key=lambda r: hashlib.blake2b(r["id"].encode(), digest_size=8).digest())


def general_examples(corpus_dir: Path, n: int, cfg: SFTDataConfig) -> tuple[list[dict], list[dict], dict]:
    """`n` general examples spread evenly over cfg.general_kinds (a kind that runs short is made up
    by the others), the candidates excluded with their reason, and counts."""
    kinds = list(cfg.general_kinds)
    pools: dict[str, list[dict]] = {k: [] for k in kinds}
    excluded: list[dict] = []
    seen: set[str] = set()
    stats = Counter()
    if n > 0 and kinds:
        for doc in _documents(corpus_dir):
            if all(len(pool) >= n for pool in pools.values()):
                break
            stats["documents_read"] += 1
            if any(t in doc["text"] for t in SPECIAL_TOKENS):
                stats["documents_with_special_tokens"] += 1
                continue
            rng = random.Random(f"{cfg.seed}:{doc['id']}")
            for row in document_candidates(doc, kinds, rng):
                reason = "duplicate_prompt" if row["prompt"] in seen else check(row, cfg)
                seen.add(row["prompt"])
                if reason:
                    excluded.append({**row, "reason": reason})
                elif len(pools[row["family"]]) < n:
                    pools[row["family"]].append(row)
    rows: list[dict] = []
    depth = 0
    while len(rows) < n and any(depth < len(p) for p in pools.values()):  # round-robin over the kinds
        rows += [pools[k][depth] for k in kinds if depth < len(pools[k])][: n - len(rows)]
        depth += 1
    stats.update({f"available.{k}": len(p) for k, p in pools.items()})
    stats.update({f"taken.{k}": c for k, c in Counter(r["family"] for r in rows).items()})
    return rows, excluded, dict(stats)
