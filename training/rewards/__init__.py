"""Rule-based rewards for GRPO (R1-Zero and R1): accuracy by task kind, format, language consistency.

Each reward is a small pure function of the response text (the assistant's turn from `<think>` on):

| component | function | guards against |
| --- | --- | --- |
| format | `format.format_reward` | any shape but one think block, then one answer block, then nothing |
| accuracy, math | `math.math_accuracy` | grading the reasoning; answers that list several values |
| accuracy, countdown | `countdown.countdown_accuracy` | numbers not given or reused; `**`, names, calls; `eval` |
| accuracy, code | `code.code_accuracy` | code that exits before the tests; loops, bombs, escapes (sandbox) |
| language | `language.language_consistency` | mixing languages in the chain of thought |
| accuracy, general | `general.general_f1` | (a proxy: word F1 of the answer against a reference) |

Accuracy reads the answer through `format.extract_answer` and is 0 whenever that returns None. For
`general` tasks (non-reasoning prompts, task key `reference`) it is a value in [0, 1], not 0 or 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from training.rewards.code import code_accuracy_batch
from training.rewards.countdown import countdown_accuracy
from training.rewards.format import extract_answer, format_reward
from training.rewards.general import general_f1
from training.rewards.language import language_consistency
from training.rewards.math import math_accuracy
from training.sandbox import SandboxPool

REWARD_COMPONENTS = ("accuracy", "format", "language")
# Cached evaluations (training/eval_cache.py) are keyed on this: bump it whenever a reward's
# definition changes, or results scored the old way are served again.
# 2: language consistency of reasoning without letters is 1, not 0.
REWARDS_VERSION = 2
TASK_KINDS = ("math", "countdown", "code", "general")
_TASK_KEYS = {"math": ("answer",), "countdown": ("answer", "numbers"), "code": ("tests", "entry_point"),
              "general": ("reference",)}

__all__ = [
    "REWARD_COMPONENTS", "TASK_KINDS", "score", "score_batch", "extract_answer", "format_reward",
    "math_accuracy", "countdown_accuracy", "code_accuracy_batch", "language_consistency", "general_f1",
]


def score(task: Mapping, response: str, components: Sequence[str] = ("accuracy", "format"),
          sandbox: SandboxPool | None = None, language: str = "latin") -> dict[str, float]:
    """The reward components of one response to one task (a row of the tasks table)."""
    return score_batch([task], [response], components, sandbox, language)[0]


def score_batch(tasks: Sequence[Mapping], responses: Sequence[str], components: Sequence[str] = ("accuracy", "format"),
                sandbox: SandboxPool | None = None, language: str = "latin") -> list[dict[str, float]]:
    """`score` for many responses; every code task runs through one sandbox pool, in parallel.

    Math and countdown are graded in the calling thread, so on the main thread math_verify's timeouts
    work (see `math.math_accuracy`).
    """
    unknown = [c for c in components if c not in REWARD_COMPONENTS]
    if unknown:
        raise ValueError(f"unknown reward components {unknown}; accepted: {REWARD_COMPONENTS}")
    if len(tasks) != len(responses):
        raise ValueError(f"{len(tasks)} tasks but {len(responses)} responses: they must match")
    for task in tasks:
        _check_task(task)
    scores: list[dict[str, float]] = [{} for _ in tasks]
    if "accuracy" in components:
        code = [i for i, t in enumerate(tasks) if t["kind"] == "code"]
        results = code_accuracy_batch([responses[i] for i in code], [tasks[i]["tests"] for i in code],
                                      [tasks[i]["entry_point"] for i in code], sandbox) if code else []
        for i, result in zip(code, results):
            scores[i]["accuracy"] = result
        for i, (task, response) in enumerate(zip(tasks, responses)):
            if task["kind"] == "math":
                scores[i]["accuracy"] = math_accuracy(response, str(task["answer"]))
            elif task["kind"] == "countdown":
                scores[i]["accuracy"] = countdown_accuracy(response, task["numbers"], int(task["answer"]))
            elif task["kind"] == "general":
                scores[i]["accuracy"] = general_f1(response, str(task["reference"]))
    for i, response in enumerate(responses):
        if "format" in components:
            scores[i]["format"] = format_reward(response)
        if "language" in components:
            scores[i]["language"] = language_consistency(response, language)
    return [{c: s[c] for c in components} for s in scores]


def _check_task(task: Mapping) -> None:
    kind = task.get("kind")
    if kind not in TASK_KINDS:
        raise ValueError(f"task kind {kind!r} is not one of {TASK_KINDS}")
    missing = [k for k in _TASK_KEYS[kind] if task.get(k) is None]
    if missing:
        raise ValueError(f"{kind} task lacks {missing}; it has keys {sorted(task)}")
    if kind == "countdown" and not str(task["answer"]).strip().lstrip("-").isdigit():
        raise ValueError(f"countdown task answer {task['answer']!r} is not an integer target")
