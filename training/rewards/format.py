"""The R1 response format and the one place that reads the final answer out of a response.

A well-formed response (the assistant's text, from `<think>` on) is exactly

    <think>reasoning</think> <answer>final answer</answer>

with only whitespace between and after the blocks (one end-of-text token may close it). Every other
reward reads the answer through `extract_answer`, so a response that games the shape earns nothing.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
END_OF_TEXT = "<|end_of_text|>"  # the tokenizer's EOS (training.corpus.tokenizer); a test keeps them equal

_SHAPE = re.compile(
    rf"\s*{THINK_OPEN}(?P<think>.*?){THINK_CLOSE}\s*{ANSWER_OPEN}(?P<answer>.*?){ANSWER_CLOSE}\s*(?:{re.escape(END_OF_TEXT)}\s*)?",
    re.DOTALL,
)


def split_response(response: str) -> tuple[str, str] | None:
    """(reasoning, answer) of a well-formed response, the answer stripped; None for any other shape.

    Guards against: several answer blocks (the grader would have to pick one), tags inside the
    reasoning (a draft `<answer>` that a lenient parser might grade), answer text outside the tags
    (before `<answer>` or after `</answer>`), missing tags, and an empty answer.
    """
    if any(response.count(tag) != 1 for tag in TAGS):
        return None
    m = _SHAPE.fullmatch(response)
    if m is None or not m["answer"].strip():
        return None
    return m["think"], m["answer"].strip()


def format_reward(response: str) -> float:
    """1.0 for exactly one think block, then exactly one non-empty answer block, then nothing; else 0.0."""
    return 1.0 if split_response(response) is not None else 0.0


def extract_answer(response: str) -> str | None:
    """The final answer of a well-formed response; None when the shape is wrong (see `split_response`)."""
    parts = split_response(response)
    return parts[1] if parts is not None else None
