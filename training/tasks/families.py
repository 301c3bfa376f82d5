"""Generated math families: arithmetic, linear equations, countdown and word problems.

Each family is a function `(rng, difficulty) -> Instance` that draws one problem at random, with a
worked solution in the response format. Difficulty 1 is meant for the tiny profile's model, a few
million parameters trained for minutes (single-digit sums); each level adds operations and widens
the numbers. Every level >= 1 is valid; beyond the designed ones, numbers keep growing.

The template instance (`Instance.key`) is the problem without its wording: the family, the kind
of problem and its operands (`arithmetic:3 + 5 * 2`, `word:gain:3,5`). Phrasing, names and
objects are drawn separately and are not part of it, so the same problem asked in other words
is the same instance, and the split (which hashes the key) puts all its phrasings on one side.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from training.tasks.format import response


@dataclass(frozen=True)
class Instance:
    family: str
    kind: str  # math | countdown | code (what the reward function checks)
    key: str  # the template instance: family, problem and operands, never the wording
    phrasing: str  # which wording the prompt used (`<problem>/<phrasing index>`)
    prompt: str
    answer: str  # the gold: a number as text; countdown: the target; code: the reference code
    solution: str  # a worked response: <think>...</think> <answer>...</answer>
    numbers: tuple[int, ...] = ()
    tests: str = ""
    entry_point: str = ""


def _pick(rng: random.Random, phrasings: list[str]) -> tuple[int, str]:
    i = rng.randrange(len(phrasings))
    return i, phrasings[i]


# ---------------------------------------------------------------------------------------------
# arithmetic: `3 + 5 * 2`; difficulty = number of operations (1: single-digit a + b)


def reduce_steps(nums: list[int], ops: list[str]) -> tuple[list[str], int]:
    """Evaluate with the usual precedence, one operation per step: (['5 * 2 = 10', ...], value)."""
    nums, ops, steps = list(nums), list(ops), []
    for wanted in ("*", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] in wanted:
                a, b = nums[i], nums[i + 1]
                r = a * b if ops[i] == "*" else a + b if ops[i] == "+" else a - b
                steps.append(f"{a} {ops[i]} {b} = {r}")
                nums[i : i + 2], ops[i : i + 1] = [r], []
            else:
                i += 1
    return steps, nums[0]


ARITHMETIC_PHRASINGS = ["Compute {e}.", "What is {e}?", "Calculate {e}."]


def arithmetic(rng: random.Random, difficulty: int) -> Instance:
    n_ops = difficulty
    symbols = "+" if difficulty == 1 else "+-" if difficulty == 2 else "+-*"
    hi = 9 if difficulty == 1 else 20 if difficulty <= 3 else 10 * difficulty
    while True:
        nums = [rng.randint(0 if difficulty == 1 else 1, hi) for _ in range(n_ops + 1)]
        ops = [rng.choice(symbols) for _ in range(n_ops)]
        steps, value = reduce_steps(nums, ops)
        if value >= 0 or difficulty > 3:  # easy levels stay non-negative
            break
    expr = " ".join(str(x) for pair in zip(nums, ops + [""]) for x in pair if x != "")
    i, phrasing = _pick(rng, ARITHMETIC_PHRASINGS)
    return Instance("arithmetic", "math", f"arithmetic:{expr}", f"expression/{i}", phrasing.format(e=expr),
                    str(value), response(". ".join(steps) + ".", str(value)))


# ---------------------------------------------------------------------------------------------
# linear: solve a*x + b = c for an integer x


LINEAR_PHRASINGS = ["Solve {eq} for x.", "Find x if {eq}.", "What is x if {eq}?"]


def _term(a: int) -> str:
    return "x" if a == 1 else "-x" if a == -1 else f"{a}x"


def linear(rng: random.Random, difficulty: int) -> Instance:
    if difficulty == 1:  # x + b = c, x - b = c, all small and non-negative
        a, x, b = 1, rng.randint(0, 9), rng.randint(1, 9) * rng.choice((1, -1))
        if x + b < 0:
            b = -b
    elif difficulty == 2:
        a, x, b = rng.randint(2, 9), rng.randint(0, 9), rng.randint(1, 20) * rng.choice((1, -1))
    else:
        a = rng.randint(2, 3 * difficulty) * rng.choice((1, -1))
        x, b = rng.randint(-5 * difficulty, 5 * difficulty), rng.randint(1, 10 * difficulty) * rng.choice((1, -1))
    c = a * x + b
    eq = f"{_term(a)} {'+' if b > 0 else '-'} {abs(b)} = {c}"
    moved = f"{c} {'-' if b > 0 else '+'} {abs(b)} = {c - b}"
    steps = [f"{_term(a)} = {moved}"]
    if a != 1:
        steps.append(f"x = {c - b} / {a} = {x}")
    i, phrasing = _pick(rng, LINEAR_PHRASINGS)
    return Instance("linear", "math", f"linear:{a},{b},{c}", f"equation/{i}", phrasing.format(eq=eq),
                    str(x), response(". ".join(steps) + ".", str(x)))


# ---------------------------------------------------------------------------------------------
# countdown: reach the target with every given number once; built from a solution, so solvable


# the reward's rule (training/rewards/countdown.py): each number at most once; ours use them all
COUNTDOWN_PHRASINGS = [
    "Use {nums} (each at most once) to make {t}.",
    "Make {t} from {nums}, using each number at most once.",
    "Reach {t} with {nums}. Use each number at most once.",
]


def countdown(rng: random.Random, difficulty: int) -> Instance:
    count = min(difficulty + 1, 6)
    symbols = "+-" if difficulty <= 2 else "+-*"
    hi = 12 if difficulty == 1 else 9 if difficulty == 2 else 5 + 5 * difficulty
    while True:
        nums = [rng.randint(1, hi) for _ in range(count)]
        expr, value, steps, top = str(nums[0]), nums[0], [], ""
        for n in nums[1:]:
            op = rng.choice(symbols)
            if op == "-" and value - n < 0:  # no negative intermediate: a reader can follow it
                op = "+"
            new = value * n if op == "*" else value + n if op == "+" else value - n
            steps.append(f"{value} {op} {n} = {new}")
            # a product of a sum needs its parentheses; (a - b) - c reads fine as a - b - c
            left = f"({expr})" if op == "*" and top in "+-" and top else expr
            expr, value, top = f"{left} {op} {n}", new, op
        if 0 < value <= 999:
            break
    shown = list(nums)
    rng.shuffle(shown)
    i, phrasing = _pick(rng, COUNTDOWN_PHRASINGS)
    key = f"countdown:{','.join(map(str, sorted(nums)))}:{value}"
    return Instance("countdown", "countdown", key, f"countdown/{i}",
                    phrasing.format(nums=", ".join(map(str, shown)), t=value), str(value),
                    response(". ".join(steps) + ".", expr), numbers=tuple(shown))


# ---------------------------------------------------------------------------------------------
# word problems: short stories with exact integer answers


NAMES = ["Tom", "Anna", "Sam", "Mia", "Ben", "Lily", "Max", "Zoe"]
THINGS = ["apples", "pens", "cards", "stickers"]  # names and objects are wording, not part of the key
GOODS = ["pens", "books", "cups", "hats"]


@dataclass(frozen=True)
class Story:
    problem: str  # part of the key: the arithmetic the story asks for
    level: int
    sample: Callable[[random.Random, int], tuple[int, ...]]  # (rng, scale) -> numbers
    solve: Callable[..., tuple[list[str], int]]  # numbers -> (steps, answer)
    phrasings: list[str]  # {name}, {item} and the numbers as {a}, {b}, {c}
    items: list[str]


def _one(op: str) -> Callable[..., tuple[list[str], int]]:
    def solve(a: int, b: int) -> tuple[list[str], int]:
        r = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a // b
        return [f"{a} {op} {b} = {r}"], r
    return solve


def _change(k: int, p: int, m: int) -> tuple[list[str], int]:
    return [f"{k} * {p} = {k * p}", f"{m} - {k * p} = {m - k * p}"], m - k * p


def _left(a: int, b: int, c: int) -> tuple[list[str], int]:
    return [f"{a} * {b} = {a * b}", f"{a * b} - {c} = {a * b - c}"], a * b - c


def _savings(a: int, b: int, c: int) -> tuple[list[str], int]:
    return [f"{b} * {c} = {b * c}", f"{a} + {b * c} = {a + b * c}"], a + b * c


def _lose_sample(rng: random.Random, s: int) -> tuple[int, int]:
    a = rng.randint(2, 9)
    return a, rng.randint(1, a)


def _share_sample(rng: random.Random, s: int) -> tuple[int, int]:
    b = rng.randint(2, 9)
    return b * rng.randint(2, 9), b


def _change_sample(rng: random.Random, s: int) -> tuple[int, int, int]:
    k, p = rng.randint(2, 5), rng.randint(2, 9 * s)
    return k, p, (k * p // 10 + 1) * 10 + 10 * rng.randint(0, s)


def _left_sample(rng: random.Random, s: int) -> tuple[int, int, int]:
    a, b = rng.randint(6, 12), rng.randint(2, 5 * s)
    return a, b, rng.randint(1, a * b - 1)


STORIES = [
    Story("gain", 1, lambda r, s: (r.randint(1, 9), r.randint(1, 9)), _one("+"),
          ["{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
           "{name} had {a} {item}. A friend gave {name} {b} more. How many {item} does {name} have?"],
          THINGS),
    Story("lose", 1, _lose_sample, _one("-"),
          ["{name} has {a} {item} and gives away {b}. How many {item} are left?",
           "{name} had {a} {item} and lost {b}. How many {item} does {name} have now?"],
          THINGS),
    Story("arrive", 1, lambda r, s: (r.randint(1, 9), r.randint(1, 9)), _one("+"),
          ["There are {a} {item} in a park. {b} more come. How many {item} are there now?",
           "{a} {item} sit on a fence and {b} more join them. How many {item} are there?"],
          ["birds", "ducks", "dogs", "kids"]),
    Story("price", 2, lambda r, s: (r.randint(2, 12), r.randint(2, 9)), _one("*"),
          ["{b} {item} cost {a} dollars each. How much do they cost in all?",
           "{name} buys {b} {item} at {a} dollars each. How many dollars is that?"],
          GOODS),
    Story("speed", 2, lambda r, s: (10 * r.randint(2, 9), r.randint(2, 9)), _one("*"),
          ["A {item} goes {a} km per hour. How far does it go in {b} hours?",
           "A {item} drives {b} hours at {a} km per hour. How many km is that?"],
          ["train", "car", "bus", "truck"]),
    Story("share", 2, _share_sample, _one("/"),
          ["{name} shares {a} {item} equally among {b} friends. How many does each friend get?",
           "{a} {item} are split evenly into {b} bags. How many {item} are in each bag?"],
          ["cookies", "sweets", "marbles", "nuts"]),
    Story("change", 3, _change_sample, _change,
          ["{name} buys {a} {item} at {b} dollars each and pays with {c} dollars. What is the change?",
           "{a} {item} cost {b} dollars each. {name} pays {c} dollars. How much change is due?"],
          GOODS),
    Story("left", 3, _left_sample, _left,
          ["A box holds {a} {item}. {name} has {b} boxes and uses {c}. How many {item} are left?",
           "{name} has {b} packs of {a} {item} and gives away {c}. How many {item} remain?"],
          ["eggs", "pencils", "cookies", "cards"]),
    Story("savings", 3, lambda r, s: (r.randint(5, 50 * s), r.randint(2, 9 * s), r.randint(2, 9)), _savings,
          ["{name} has {a} dollars and saves {b} dollars a week for {c} weeks. How much does {name} have then?",
           "{name} starts with {a} dollars and adds {b} each day for {c} days. How many dollars now?"],
          ["coins"]),
]


def word(rng: random.Random, difficulty: int) -> Instance:
    level = min(difficulty, 3)
    story = rng.choice([s for s in STORIES if s.level == level])
    nums = story.sample(rng, max(1, difficulty - 2))
    steps, value = story.solve(*nums)
    i, phrasing = _pick(rng, story.phrasings)
    values = dict(zip("abc", nums))
    prompt = phrasing.format(name=rng.choice(NAMES), item=rng.choice(story.items), **values)
    return Instance("word", "math", f"word:{story.problem}:{','.join(map(str, nums))}", f"{story.problem}/{i}",
                    prompt, str(value), response(". ".join(steps) + ".", str(value)))
