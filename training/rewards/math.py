"""Math accuracy: the extracted answer equals the gold answer, checked symbolically by math_verify.

Only the answer block is graded (never the reasoning), so numbers scattered through the reasoning earn
nothing. Both sides are read as LaTeX (`13` -> `$13$`), so `1/2`, `0.5` and `\\frac{1}{2}` agree, and
an answer listing several values (`12, 13, 14`, `12 or 13`) parses as a set, which never equals a single
gold value. A plain-text parse would instead pick one number out of the list.
"""

from __future__ import annotations

import re
import threading

from training.rewards.format import extract_answer

MAX_ANSWER_CHARS = 1_000  # longer "answers" are lists or essays; they also make parsing slow
MAX_EXPONENT = 10_000  # larger exponents or factorials make sympy's numeric comparison run for minutes
_ALREADY_MATH = re.compile(r"(?<!\\)\$|\\boxed|\\\(|\\\[")


def math_accuracy(response: str, gold: str, timeout_seconds: int = 5) -> float:
    """1.0 when the answer block is mathematically equal to `gold`, else 0.0.

    NOTE: math_verify times its parse and compare with SIGALRM, which only the main thread may arm; in
    any other thread it raises ValueError unless the timeout is None. So on the main thread (the
    trainer's scoring loop, a process-pool worker) `timeout_seconds` applies; in a thread it is None
    and the size guards (answer length, exponent and factorial size) are what keep a call short.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    answer = extract_answer(response)
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return 0.0
    timeout = timeout_seconds if threading.current_thread() is threading.main_thread() else None
    target = parse(_as_latex(gold), [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=timeout)
    predicted = parse(_as_latex(answer), [LatexExtractionConfig()], parsing_timeout=timeout)
    if not target or not predicted or _too_costly(predicted):
        return 0.0
    return 1.0 if verify(target, predicted, timeout_seconds=timeout) else 0.0


def _as_latex(text: str) -> str:
    """Wrap bare text in `$...$` so math_verify reads the whole of it, not the last number it finds."""
    return text if _ALREADY_MATH.search(text) else f"${text}$"


def _too_costly(parsed: list) -> bool:
    """Power towers such as 10^{10^{10}} or 100000!: no gold answer is one, and comparing them hangs."""
    from sympy import Basic, Pow, factorial, postorder_traversal

    for expr in parsed:
        if not isinstance(expr, Basic):
            continue
        for node in postorder_traversal(expr):  # inner nodes first: an outer tower is never evaluated
            size = node.exp if isinstance(node, Pow) else node.args[0] if isinstance(node, factorial) else None
            if size is None or not size.is_number:
                continue
            try:
                if bool(abs(size) > MAX_EXPONENT):
                    return True
            except TypeError:  # an undecidable comparison: treat as too costly
                return True
    return False
