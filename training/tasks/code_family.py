"""The generated code family: write a small Python function that passes hidden unit tests.

A problem is a parameterised function (add k, count the letter c, fizzbuzz with divisors a and b,
...) at one level of difficulty; its template instance is the problem and its parameters. The
function's name and the prompt's wording are surface and drawn separately. The hidden tests are
asserts on inputs drawn from a generator seeded by the instance itself, so one instance always
carries the same tests; the expected values come from running the reference code.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Callable

from training.tasks.families import Instance, _pick
from training.tasks.format import response

PHRASINGS = ["Write a Python function {sig} that {does}.", "Define {sig} in Python: it {does}."]
WORDS = ["cat", "banana", "sky", "apple", "queue", "rhythm", "", "Ohio", "level", "idea"]


@dataclass(frozen=True)
class Problem:
    name: str  # part of the key
    level: int
    params: Callable[[random.Random], tuple]  # draws the parameters
    names: list[str]  # function names, formatted with the parameters ({0}, {1})
    args: str  # the signature's arguments
    does: str  # what the function returns, formatted with the parameters
    body: str  # the reference body (one or more lines, indented by 4)
    think: str  # the reasoning, formatted with the parameters
    inputs: Callable[[random.Random], tuple]  # one test call's arguments


def _ints(r: random.Random, n: int = 5, lo: int = -9, hi: int = 20) -> list[int]:
    return [r.randint(lo, hi) for _ in range(r.randint(0, n))]


PROBLEMS = [
    # level 1: one expression over numbers
    Problem("add", 1, lambda r: (r.randint(1, 20),), ["add{0}", "plus{0}"], "n", "returns n plus {0}",
            "return n + {0}", "Add {0} to n.", lambda r: (r.randint(-50, 50),)),
    Problem("times", 1, lambda r: (r.randint(2, 12),), ["times{0}", "mul{0}"], "n", "returns n times {0}",
            "return n * {0}", "Multiply n by {0}.", lambda r: (r.randint(-20, 20),)),
    Problem("multiple", 1, lambda r: (r.randint(2, 12),), ["is_multiple_of_{0}", "divisible_by_{0}"], "n",
            "returns True if {0} divides n, else False", "return n % {0} == 0",
            "n is divisible by {0} when n % {0} is 0.", lambda r: (r.randint(0, 60),)),
    Problem("max_pair", 1, lambda r: (), ["max_of_pair", "larger"], "a, b", "returns the larger of a and b",
            "return a if a > b else b", "Compare a and b.", lambda r: (r.randint(-20, 20), r.randint(-20, 20))),
    Problem("min_pair", 1, lambda r: (), ["min_of_pair", "smaller"], "a, b", "returns the smaller of a and b",
            "return a if a < b else b", "Compare a and b.", lambda r: (r.randint(-20, 20), r.randint(-20, 20))),
    # level 2: one pass over a list or string
    Problem("sum", 2, lambda r: (), ["sum_list", "total"], "xs", "returns the sum of the numbers in xs",
            "return sum(xs)", "Add up the list.", lambda r: (_ints(r),)),
    Problem("sum_above", 2, lambda r: (r.randint(0, 9),), ["sum_above_{0}", "sum_over_{0}"], "xs",
            "returns the sum of the items of xs above {0}", "return sum(x for x in xs if x > {0})",
            "Keep numbers over {0}, then add them.", lambda r: (_ints(r),)),
    Problem("reverse", 2, lambda r: (), ["reverse_string", "backwards"], "s", "returns the string s reversed",
            "return s[::-1]", "A slice with step -1 reverses.", lambda r: (r.choice(WORDS),)),
    Problem("vowels", 2, lambda r: (), ["count_vowels", "vowels"], "s",
            "returns the number of vowels (aeiou) in s",
            "return sum(c in 'aeiou' for c in s)", "Count letters found in 'aeiou'.",
            lambda r: (r.choice(WORDS),)),
    Problem("count_char", 2, lambda r: (r.choice("abcdeilnoprstuy"),), ["count_{0}", "num_{0}"], "s",
            "returns how many times '{0}' appears in s", "return s.count('{0}')", "str.count counts '{0}'.",
            lambda r: (r.choice(WORDS),)),
    Problem("repeat", 2, lambda r: (r.randint(2, 9),), ["repeat{0}", "copies{0}"], "s",
            "returns s repeated {0} times", "return s * {0}", "Multiply the string by {0}.",
            lambda r: (r.choice(WORDS),)),
    Problem("scale", 2, lambda r: (r.randint(2, 9),), ["scale{0}", "times{0}_all"], "xs",
            "returns a list of each number in xs times {0}", "return [x * {0} for x in xs]",
            "Multiply each item by {0}.", lambda r: (_ints(r),)),
    # level 3: a condition or two
    Problem("fizzbuzz", 3, lambda r: tuple(r.sample(range(2, 8), 2)), ["fizzbuzz", "fizz_buzz"], "n",
            "returns 'Fizz' if {0} divides n, 'Buzz' if {1} does, 'FizzBuzz' if both, else str(n)",
            "s = ('Fizz' if n % {0} == 0 else '') + ('Buzz' if n % {1} == 0 else '')\n    return s or str(n)",
            "Build the word from both tests.", lambda r: (r.randint(1, 60),)),
    Problem("count_div", 3, lambda r: (r.randint(2, 9),), ["count_div{0}", "multiples_of_{0}"], "xs",
            "returns how many numbers in xs are divisible by {0}", "return sum(1 for x in xs if x % {0} == 0)",
            "Count the x with x % {0} == 0.", lambda r: (_ints(r, 6, 0, 40),)),
    Problem("digit_sum", 3, lambda r: (), ["digit_sum", "sum_digits"], "n",
            "returns the sum of the digits of n (n >= 0)", "return sum(int(c) for c in str(n))",
            "Add the digits of str(n).", lambda r: (r.randint(0, 9999),)),
    Problem("clip", 3, lambda r: (lo := r.randint(0, 5), lo + r.randint(5, 15)), ["clip_{0}_{1}", "clamp_{0}_{1}"],
            "n", "returns n limited to the range {0} to {1}", "return max({0}, min({1}, n))",
            "Raise to {0}, cap at {1}.", lambda r: (r.randint(-10, 30),)),
]

TESTS_PER_INSTANCE = 4


def reference(name: str, args: str, body: str) -> str:
    return f"def {name}({args}):\n    {body}"


def hidden_tests(problem: Problem, name: str, code: str, key: str) -> str:
    """Asserts on inputs drawn from a generator seeded by the instance key; expected values run `code`."""
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - our own reference code, never a model's
    fn = namespace[name]
    r = random.Random(zlib.crc32(key.encode()))
    calls: dict[str, object] = {}
    for _ in range(20 * TESTS_PER_INSTANCE):  # bounded: some problems have few distinct inputs
        args = problem.inputs(r)
        calls.setdefault(f"{name}({', '.join(map(repr, args))})", fn(*args))
        if len(calls) == TESTS_PER_INSTANCE:
            break
    return "\n".join(f"assert {call} == {expected!r}" for call, expected in calls.items())


def code(rng: random.Random, difficulty: int) -> Instance:
    """A code task at `difficulty` (levels above 3 draw from level 3: the problems do not grow)."""
    problem = rng.choice([p for p in PROBLEMS if p.level == min(difficulty, 3)])
    params = problem.params(rng)
    name = rng.choice(problem.names).format(*params)
    src = reference(name, problem.args, problem.body.format(*params))
    key = f"code:{problem.name}:{','.join(map(str, params))}"
    i, phrasing = _pick(rng, PHRASINGS)
    prompt = phrasing.format(sig=f"{name}({problem.args})", does=problem.does.format(*params))
    return Instance("code", "code", key, f"{problem.name}/{i}", prompt, src,
                    response(problem.think.format(*params), src),
                    tests=hidden_tests(problem, name, src, key), entry_point=name)
