"""A rule proxy for helpfulness on general (non-reasoning) prompts: token F1 against a reference.

The pipeline has no reward model and no teacher to judge free text, so the final RL stage scores a
general prompt the way reading-comprehension benchmarks score short answers (SQuAD v1.1's
evaluation script): both the answer block and the `reference` are normalized (lowercase, ASCII
punctuation removed, the articles a / an / the dropped, whitespace collapsed) and split into
words; then

    precision = |common| / |answer words|     recall = |common| / |reference words|
    F1 = 2 precision recall / (precision + recall)          (common: the multiset intersection)

It is 0 when the response is not well-formed (`format.extract_answer` returns None), so the format
reward and this one never disagree about the shape. The general prompts are built so that the
reference is an answer the data itself states (training/general_prompts.py: a docstring's first
sentence, a function's name, the rest of a sentence).

What it measures, and what not: overlap of words with one reference. Padding the answer with extra
words costs precision and a partial answer costs recall, but a paraphrase with other words scores
low and a wrong statement that reuses the reference's words scores high. It is a proxy for "says
what the source says", not for helpfulness in general.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from training.rewards.format import extract_answer

MAX_ANSWER_CHARS = 2_000  # a general answer is a sentence; an essay scores 0 rather than costing time
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """Word-level F1 of two texts after `normalize_answer`; 1.0 when both normalize to nothing."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def general_f1(response: str, reference: str) -> float:
    """F1 of the answer block against `reference`; 0.0 for a malformed response or an empty reference."""
    answer = extract_answer(response)
    if answer is None or len(answer) > MAX_ANSWER_CHARS or not normalize_answer(reference):
        return 0.0
    return token_f1(answer, reference)
