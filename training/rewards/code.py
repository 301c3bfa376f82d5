"""Code accuracy: the function in the answer block passes the task's tests inside the sandbox.

The answer block holds the code, bare or in one ```python fence. The program run is

    <answer code>
    assert callable(<entry_point>)      # the function must exist
    <tests>                             # raise (assert) on a wrong result
    print(<random sentinel>)            # proves the tests ran to the end

and it scores 1.0 only if the sandbox reports "passed" AND the sentinel is the last line of stdout:
code that prints 'OK' and calls `sys.exit(0)` / `os._exit(0)` before the tests, or an atexit hook
that turns a failure into exit code 0, skips the sentinel. Loops, bombs and escapes are the sandbox's
business (training/sandbox.py). NOTE: not guarded: an answer that returns an object whose `__eq__`
is always true passes `assert f(x) == y` (tests should compare types too), and code that reads its own
source to print the sentinel.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from training.rewards.format import extract_answer
from training.sandbox import Limits, SandboxPool, SandboxResult, run_python

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class CheckProgram:
    source: str
    sentinel: str  # the last stdout line of a run that finished the tests

    def passed(self, result: SandboxResult) -> bool:
        return result.passed and result.stdout.rstrip("\n").rsplit("\n", 1)[-1] == self.sentinel


def check_program(answer: str, tests: str, entry_point: str) -> CheckProgram:
    """The program that runs the answer's code against `tests` (see the module docstring)."""
    fenced = _FENCE.search(answer)
    code = fenced[1] if fenced else answer
    sentinel = f"tests-finished-{secrets.token_hex(8)}"
    check = f"assert callable(globals().get({entry_point!r})), 'the answer does not define {entry_point}'"
    return CheckProgram(f"{code}\n\n{check}\n{tests}\n\nprint({sentinel!r})\n", sentinel)


def code_accuracy(response: str, tests: str, entry_point: str, sandbox: SandboxPool | None = None,
                  limits: Limits = Limits()) -> float:
    """1.0 when the answer's code passes `tests`; `limits` applies when no `sandbox` pool is given."""
    return code_accuracy_batch([response], [tests], [entry_point], sandbox, limits)[0]


def code_accuracy_batch(responses: list[str], tests: list[str], entry_points: list[str],
                        sandbox: SandboxPool | None = None, limits: Limits = Limits()) -> list[float]:
    """`code_accuracy` for many responses, run in parallel through one pool (a new one if none is given)."""
    if not len(responses) == len(tests) == len(entry_points):
        raise ValueError(f"{len(responses)} responses, {len(tests)} tests, {len(entry_points)} entry points: they must match")
    programs: list[CheckProgram | None] = []
    for response, test, entry_point in zip(responses, tests, entry_points):
        answer = extract_answer(response)
        programs.append(check_program(answer, test, entry_point) if answer is not None else None)
    runnable = [p for p in programs if p is not None]
    if sandbox is not None:
        results = sandbox.map([p.source for p in runnable])
    elif len(runnable) == 1:
        results = [run_python(runnable[0].source, limits)]
    else:
        with SandboxPool(limits=limits) as pool:
            results = pool.map([p.source for p in runnable])
    verdicts = iter(p.passed(r) for p, r in zip(runnable, results))
    return [1.0 if p is not None and next(verdicts) else 0.0 for p in programs]
