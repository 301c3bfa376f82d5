"""Rule-based rewards: hand-checked scores for correct, wrong, equivalent and reward-hacking responses."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from training.rewards import (
    REWARD_COMPONENTS, code_accuracy_batch, countdown_accuracy, extract_answer, format_reward,
    language_consistency, math_accuracy, score, score_batch,
)
from training.rewards.code import code_accuracy
from training.rewards.format import END_OF_TEXT, TAGS
from training.sandbox import Limits, SandboxPool

FAST = Limits(cpu_seconds=1, wall_seconds=2, memory_mb=256)


def r(answer: str, think: str = "some reasoning") -> str:
    return f"<think>{think}</think> <answer>{answer}</answer>"


# ---------------------------------------------------------------- format

WELL_FORMED = {
    "the example": ("<think>5 * 2 = 10. 3 + 10 = 13.</think> <answer>13</answer>", "13"),
    "end of text after": ("<think>a</think>\n<answer> 13 </answer>\n" + END_OF_TEXT, "13"),
    "trailing whitespace": ("<think>a</think><answer>x = 2</answer>  \n", "x = 2"),
    "multi-line answer": ("<think>a</think><answer>def f():\n    return 1</answer>", "def f():\n    return 1"),
}
MALFORMED = {
    "two answer blocks": "<think>a</think> <answer>12</answer> <answer>13</answer>",
    "answer tag inside the reasoning": "<think>maybe <answer>12</answer></think> <answer>13</answer>",
    "unclosed answer tag inside the reasoning": "<think>maybe <answer> 12</think> <answer>13</answer>",
    "text after the answer": "<think>a</think> <answer>12</answer> or maybe 13",
    "text before the answer": "<think>a</think> The answer is <answer>13</answer>",
    "no think block": "<answer>13</answer>",
    "no answer block": "<think>it is 13</think> 13",
    "unclosed answer": "<think>a</think> <answer>13",
    "empty answer": "<think>a</think> <answer> </answer>",
    "answer before think": "<answer>13</answer> <think>a</think>",
    "text after end of text": "<think>a</think> <answer>13</answer>" + END_OF_TEXT + " 14",
    "two think blocks": "<think>a</think><think>b</think> <answer>13</answer>",
}


@pytest.mark.parametrize("response,answer", WELL_FORMED.values(), ids=WELL_FORMED.keys())
def test_well_formed_responses_score_format_and_yield_their_answer(response, answer):
    assert format_reward(response) == 1.0 and extract_answer(response) == answer


@pytest.mark.parametrize("response", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_responses_score_no_format_and_no_answer(response):
    assert format_reward(response) == 0.0 and extract_answer(response) is None


def test_tags_match_the_tokenizer_special_tokens():
    from training.corpus.tokenizer import EOS, REASONING

    assert TAGS == REASONING and END_OF_TEXT == EOS


# ---------------------------------------------------------------- math

MATH = [  # (gold, answer, score)
    ("13", "13", 1.0), ("13", "14", 0.0), ("13", "13.0", 1.0), ("13", "\\boxed{13}", 1.0), ("13", "x = 13", 1.0),
    ("0.5", "\\frac{1}{2}", 1.0), ("1/2", "0.5", 1.0), ("\\frac{1}{2}", "1/2", 1.0), ("\\frac{1}{2}", "\\frac{1}{3}", 0.0),
    ("\\sqrt{2}", "2^{1/2}", 1.0), ("\\frac{\\pi}{2}", "\\pi/2", 1.0), ("-3", "3", 0.0),
    ("13", "12, 13, 14", 0.0), ("13", "12 or 13", 0.0), ("13", "13 or 12", 0.0), ("13", "\\boxed{12} \\boxed{13}", 0.0),
    ("13", ", ".join(str(i) for i in range(200)), 0.0),
]


@pytest.mark.parametrize("gold,answer,expected", MATH)
def test_math_accuracy_compares_the_answer_block_to_the_gold(gold, answer, expected):
    assert math_accuracy(r(answer), gold) == expected


def test_math_numbers_in_the_reasoning_or_outside_the_tags_earn_nothing():
    every_number = " ".join(str(i) for i in range(1000))
    assert math_accuracy(r("7", think=every_number), "13") == 0.0
    assert math_accuracy(f"<think>{every_number}</think> 13 <answer>7</answer>", "13") == 0.0
    assert math_accuracy("<think>a</think> <answer>7</answer> 13", "13") == 0.0
    assert math_accuracy("<think><answer>13</answer></think> <answer>7</answer>", "13") == 0.0


def test_math_power_towers_are_refused_quickly():
    start = time.monotonic()
    assert math_accuracy(r("10^{10^{10}}"), "10") == 0.0
    assert math_accuracy(r("100000!"), "10") == 0.0
    assert time.monotonic() - start < 2  # math_verify alone spends its 5 s timeout on the first


def test_math_accuracy_works_off_the_main_thread():
    out = []
    worker = threading.Thread(target=lambda: out.append(math_accuracy(r("\\frac{2}{4}"), "0.5")))
    worker.start()
    worker.join()
    assert out == [1.0]  # with math_verify's default timeouts this thread would raise ValueError


# ---------------------------------------------------------------- countdown

COUNTDOWN = [  # (numbers, target, answer, score)
    ([3, 5, 7], 22, "3 * 5 + 7", 1.0),
    ([3, 5, 7], 22, "(7 + 3) * 5", 0.0),  # = 50
    ([3, 5, 7, 9], 22, "5 * 3 + 7", 1.0),  # not every number has to be used
    ([3, 3, 8, 8], 24, "8 / (3 - 8 / 3)", 1.0),  # exact: floats give 23.999999999999993
    ([3, 5, 7], 22, "3 * 5 + 7 * 1", 0.0),  # 1 was not given
    ([3, 5, 7], 29, "3 * 7 + 7 + 1", 0.0),  # 7 used twice
    ([3, 5, 7], 22, "3 * 5 + 8 - 1", 0.0),
    ([2, 3, 5], 13, "2 ** 3 + 5", 0.0),  # power is not an allowed operator
    ([3, 5, 7], 22, "x + 22", 0.0),
    ([3, 5, 7], 22, "abs(22)", 0.0),
    ([3, 5, 7], 22, "__import__('os').getpid()", 0.0),
    ([3, 5, 7], 22, "(3).real * 5 + 7", 0.0),  # attributes are refused
    ([7, 5, 5], 1, "7 / (5 - 5)", 0.0),  # division by zero
    ([3, 5, 7], 22, "22.0", 0.0),
    ([3, 5, 7], 22, "3 * 5 + 7 = 22", 0.0),  # the answer is the expression alone
    ([3, 5, 5], 22, "-3 + 5 * 5", 1.0),
]


@pytest.mark.parametrize("numbers,target,answer,expected", COUNTDOWN)
def test_countdown_accuracy(numbers, target, answer, expected):
    assert countdown_accuracy(r(answer), numbers, target) == expected


def test_countdown_answer_outside_the_tags_earns_nothing():
    assert countdown_accuracy("<think>3 * 5 + 7</think> 3 * 5 + 7", [3, 5, 7], 22) == 0.0


# ---------------------------------------------------------------- code

TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0"
CODE = {
    "fenced": ("```python\ndef add(a, b):\n    return a + b\n```", 1.0),
    "bare": ("def add(a, b):\n    return a + b", 1.0),
    "wrong": ("def add(a, b):\n    return a - b", 0.0),
    "prints OK without the function": ("print('OK')", 0.0),
    "exits 0 before the tests": ("import sys\ndef add(a, b):\n    return 0\nprint('OK')\nsys.exit(0)", 0.0),
    "os._exit before the tests": ("import os\ndef add(a, b):\n    return 0\nos._exit(0)", 0.0),
    "atexit turns failure into 0": ("import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    return 0", 0.0),
    "infinite loop": ("def add(a, b):\n    while True:\n        pass", 0.0),
    "reads the repository": (f"print(open({str(Path(__file__).resolve().parents[1] / 'README.md')!r}).read())\ndef add(a, b):\n    return a + b", 0.0),
    "kills its parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef add(a, b):\n    return a + b", 0.0),
}


def test_code_accuracy_runs_the_tests_in_the_sandbox():
    names = list(CODE)
    with SandboxPool(workers=4, limits=FAST) as pool:
        scores = code_accuracy_batch([r(CODE[n][0]) for n in names], [TESTS] * len(names), ["add"] * len(names), pool)
    assert dict(zip(names, scores)) == {n: CODE[n][1] for n in names}


def test_code_accuracy_of_one_response_and_of_a_missing_answer():
    assert code_accuracy(r(CODE["bare"][0]), TESTS, "add", limits=FAST) == 1.0
    assert code_accuracy("<think>def add(a, b): return a + b</think>", TESTS, "add", limits=FAST) == 0.0


# ---------------------------------------------------------------- language

LANGUAGE = [  # (reasoning, script, share)
    ("The sum is 13.", "latin", 1.0),
    ("和是13。", "cjk", 1.0),
    ("和是13。", "latin", 0.0),
    ("The sum 是 13", "latin", 6 / 7),
    ("Сумма равна 13", "cyrillic", 1.0),
    ("Let α be 2, so π α is", "latin", 1.0),  # Greek letters are maths, not a language switch
    ("すうがく and 수학", "cjk", 6 / 9),
    ("1 + 2 = 3", "latin", 1.0),  # no letters: no other language either
]


@pytest.mark.parametrize("reasoning,script,share", LANGUAGE)
def test_language_consistency_is_the_share_of_letters_in_the_script(reasoning, script, share):
    assert language_consistency(r("13", think=reasoning), script) == pytest.approx(share)


def test_language_consistency_reads_only_the_reasoning():
    assert language_consistency("<think>the sum</think> <answer>和</answer>") == 1.0
    assert language_consistency("no think block at all") == 0.0
    assert language_consistency("<think> </think> <answer>3</answer>") == 0.0  # no reasoning earns nothing
    with pytest.raises(ValueError, match="klingon"):
        language_consistency(r("1"), "klingon")


# ---------------------------------------------------------------- score

def test_score_combines_components_for_each_task_kind():
    math_task = {"kind": "math", "answer": "\\frac{1}{2}"}
    assert score(math_task, r("0.5")) == {"accuracy": 1.0, "format": 1.0}
    assert score(math_task, "<think>a</think> 0.5") == {"accuracy": 0.0, "format": 0.0}
    countdown = {"kind": "countdown", "answer": "22", "numbers": [3, 5, 7]}
    assert score(countdown, r("3 * 5 + 7", think="和"), REWARD_COMPONENTS) == {"accuracy": 1.0, "format": 1.0, "language": 0.0}
    code_task = {"kind": "code", "tests": TESTS, "entry_point": "add"}
    assert score(code_task, r(CODE["fenced"][0]), ("accuracy",)) == {"accuracy": 1.0}


def test_score_batch_runs_code_tasks_through_one_pool():
    code_task = {"kind": "code", "tests": TESTS, "entry_point": "add"}
    tasks = [code_task, {"kind": "math", "answer": "13"}, code_task, code_task]
    responses = [r(CODE["bare"][0]), r("13"), r(CODE["wrong"][0]), r(CODE["fenced"][0])]
    with SandboxPool(workers=2, limits=FAST) as pool:
        scores = score_batch(tasks, responses, ("accuracy", "format"), pool)
    assert [s["accuracy"] for s in scores] == [1.0, 1.0, 0.0, 1.0]


def test_score_refuses_unknown_kinds_components_and_incomplete_tasks():
    with pytest.raises(ValueError, match=r"'proof'.*\('math', 'countdown', 'code', 'general'\)"):
        score({"kind": "proof", "answer": "1"}, r("1"))
    with pytest.raises(ValueError, match="'style'"):
        score({"kind": "math", "answer": "1"}, r("1"), ("accuracy", "style"))
    with pytest.raises(ValueError, match="entry_point"):
        score({"kind": "code", "tests": TESTS}, r("1"))
