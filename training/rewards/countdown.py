"""Countdown accuracy: the answer is an arithmetic expression over the given numbers that hits the target.

The answer block holds only the expression, e.g. `(100 - 4) * 3 / 9`. Allowed: integer literals, the
binary operators + - * /, unary minus and parentheses. Each given number may be used AT MOST ONCE
(the common Countdown rule; not all need be used); a number not given, or given once and used twice,
scores 0. The expression is read with `ast` and evaluated by hand in exact `Fraction` arithmetic
(never `eval`): names, calls, attributes, `**`, `//`, `%` and floats are refused, and dividing by zero
scores 0.
"""

from __future__ import annotations

import ast
import operator
from collections import Counter
from collections.abc import Iterable
from fractions import Fraction

from training.rewards.format import extract_answer

MAX_EXPRESSION_CHARS = 200  # a few numbers and operators; longer is not a Countdown answer
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def countdown_accuracy(response: str, numbers: Iterable[int], target: int) -> float:
    """1.0 when the answer block's expression uses only `numbers` (each at most once) and equals `target`."""
    answer = extract_answer(response)
    if answer is None or len(answer) > MAX_EXPRESSION_CHARS:
        return 0.0
    used: list[int] = []
    try:
        value = _evaluate(ast.parse(answer, mode="eval").body, used)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return 0.0
    if Counter(used) - Counter(int(n) for n in numbers):  # a number not given, or used too often
        return 0.0
    return 1.0 if value == target else 0.0


def _evaluate(node: ast.expr, used: list[int]) -> Fraction:
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate(node.left, used), _evaluate(node.right, used))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:  # NOTE: bool is an int subclass
        used.append(node.value)
        return Fraction(node.value)
    raise ValueError(f"{ast.dump(node)[:60]} is not allowed in a Countdown expression")
