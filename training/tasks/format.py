"""The one definition of what a task looks like to the model: the chat turn and the response format.

Worked examples in the pretraining mix, GRPO rollouts and evaluation all render a task through
these functions, so the model is trained and measured on the same bytes:

    <|begin_of_text|><|user|>{prompt}<|assistant|><think>{reasoning}</think> <answer>{final}</answer><|end_of_text|>

The role markers, BOS/EOS and the four reasoning tags are special tokens of the BPE tokenizer
(training/corpus/tokenizer.py); written in text, they encode to their special ids.
"""

from __future__ import annotations

from training.corpus.tokenizer import BOS, EOS, ROLES

USER, ASSISTANT = ROLES[1], ROLES[2]


def response(reasoning: str, final: str) -> str:
    """A worked response in the R1 format: `<think>reasoning</think> <answer>final</answer>`."""
    return f"<think>{reasoning}</think> <answer>{final}</answer>"


def render_prompt(prompt: str) -> str:
    """The text a model continues to answer `prompt` (generation starts after `<|assistant|>`)."""
    return f"{BOS}{USER}{prompt}{ASSISTANT}"


def render_example(prompt: str, solution: str) -> str:
    """One whole chat: the prompt turn, the worked solution and EOS (what the model later sees)."""
    return f"{render_prompt(prompt)}{solution}{EOS}"


def render_document(examples: list[tuple[str, str]]) -> str:
    """Several examples as one pretraining document.

    NOTE: the last example leaves out its EOS because the shard writer appends EOS after every
    document (training/corpus/shards.py); the token stream then holds exactly one EOS per example.
    """
    text = "".join(render_example(p, s) for p, s in examples)
    return text[: -len(EOS)] if text.endswith(EOS) else text
