"""The user's own task sets: GSM8K/MATH-style math and HumanEval-style code, as JSONL.

Math lines hold `question` and `answer` (MATH's `problem` and `solution` are read the same way):
- GSM8K: the answer ends with `#### 42`; the gold is what follows the last `####` (commas
  removed), the reasoning what precedes it (calculator notes `<<6*7=42>>` removed);
- MATH: the gold is the last `\\boxed{...}` of the answer, the reasoning the whole answer;
- otherwise the answer is the gold as written.
Code lines hold `prompt`, `tests` (a string, or a list of assert lines) and `entry_point`; an
optional `solution` / `canonical_solution` becomes the worked solution.

A missing file stops everything with its name. A bad line (not UTF-8, not JSON, not an object, a
missing or empty field, a gold that cannot be found, too long, a question seen before) is kept
in the excluded table with the file, line number and reason, and counted.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from training.settings import TasksConfig, UserTaskSet
from training.tasks.build import excluded_row, split_of, task_id, too_long
from training.tasks.format import response


class TaskFileError(ValueError):
    """A user task file that cannot be read at all; the message names it and what is accepted."""


def boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None without one."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


def math_gold(answer: str) -> tuple[str, str]:
    """(gold, reasoning) of a GSM8K or MATH answer, else (the answer, "")."""
    if "####" in answer:
        reasoning, _, gold = answer.rpartition("####")
        return gold.strip().replace(",", ""), re.sub(r"<<[^>]*>>", "", reasoning).strip()
    found = boxed(answer)
    if found is not None:
        return found, answer.strip()
    return answer.strip(), ""


def _field(record: dict, *names: str) -> tuple[str | None, object]:
    """The first of `names` present in `record`: (its name, its value), else (None, None)."""
    for name in names:
        if name in record:
            return name, record[name]
    return None, None


def _parse(record: dict) -> tuple[dict, str | None]:
    """A record -> (task fields, None) or ({}, reason)."""
    if "tests" in record or "entry_point" in record:
        for name in ("prompt", "tests", "entry_point"):
            value = record.get(name)
            if isinstance(value, list) and name == "tests" and all(isinstance(v, str) for v in value):
                continue
            if not isinstance(value, str) or not value.strip():
                return {}, f"missing_field:{name}"
        tests = record["tests"] if isinstance(record["tests"], str) else "\n".join(record["tests"])
        _, code = _field(record, "solution", "canonical_solution")
        return {"kind": "code", "prompt": record["prompt"].strip(), "answer": code if isinstance(code, str) else "",
                "tests": tests, "entry_point": record["entry_point"].strip(),
                "solution": response("", code) if isinstance(code, str) and code.strip() else ""}, None
    for names in (("question", "problem"), ("answer", "solution")):
        name, value = _field(record, *names)
        if not isinstance(value, str) or not value.strip():
            return {}, f"missing_field:{name or names[0]}"
    _, question = _field(record, "question", "problem")
    _, answer = _field(record, "answer", "solution")
    gold, reasoning = math_gold(answer)
    if not gold:
        return {}, "empty_answer"
    return {"kind": "math", "prompt": question.strip(), "answer": gold, "tests": "", "entry_point": "",
            "solution": response(reasoning, gold) if reasoning else ""}, None


def _difficulty(record: dict) -> int:
    level = record.get("level", record.get("difficulty"))
    if isinstance(level, int):
        return level
    match = re.search(r"\d+", str(level or ""))
    return int(match.group()) if match else 0


def load_user_set(user_set: UserTaskSet, cfg: TasksConfig, seen: set[str]) -> tuple[list[dict], list[dict]]:
    """Rows of the task table and excluded rows for one file; `seen` dedups across all sets."""
    path = Path(user_set.path).expanduser()
    if not path.is_file():
        raise TaskFileError(f"tasks.user_sets: {user_set.path} is not a file; accepted: a JSONL file with "
                            f"`question` and `answer` (math) or `prompt`, `tests` and `entry_point` (code) per line")
    family = user_set.family or path.name.split(".")[0]
    source = str(user_set.path)
    rows, excluded = [], []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue

        def exclude(reason: str) -> None:
            excluded.append(excluded_row(source, lineno, family, reason, raw.decode("utf-8", "replace")))

        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            exclude("not_utf8")
            continue
        except json.JSONDecodeError as e:
            exclude(f"invalid_json:{e.msg} at column {e.colno}")
            continue
        if not isinstance(record, dict):
            exclude("not_an_object")
            continue
        task, reason = _parse(record)
        if reason:
            exclude(reason)
            continue
        reason = too_long(task["prompt"], task["solution"], cfg)
        if reason:
            exclude(reason)
            continue
        # the instance is the question itself (whitespace and case aside), whatever file it is in
        norm = " ".join(task["prompt"].lower().split())
        key = f"user:{hashlib.blake2b(norm.encode(), digest_size=8).hexdigest()}"
        if key in seen:
            exclude("duplicate_question")
            continue
        seen.add(key)
        split = split_of(key, cfg.heldout_share) if user_set.split == "hash" else user_set.split
        rows.append({"id": f"{family}-{task_id(key)}", "family": family, "difficulty": _difficulty(record),
                     "split": split, "template": key, "numbers": [], "source": source, "phrasing": "", **task})
    return rows, excluded
