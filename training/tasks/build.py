"""The task table: generated families and user sets, split into train and held-out, as Parquet.

Split rule. A task's template instance (the `template` column) is its problem without wording:
family, kind of problem and operands (families.py). It is held out when a hash of it falls below
`heldout_share`, so the split is a property of the instance itself: the same for every seed,
count and caller. The worked examples in the corpus (worked.py) draw from the same generators and
keep only `train` instances, so no held-out question reaches pretraining in any wording.
`check_split_disjoint` asserts it on a finished table.

Each (family, difficulty) cell draws instances from its own generator, seeded by
(seed, family, difficulty), until its train and held-out quotas are met or the instance space
runs dry; a shortfall is reported, never padded with repeats. Tasks over the length limits are
excluded with their reason (`excluded.parquet`), as are the bad lines of user files.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from training.settings import TASK_FAMILIES, TasksConfig
from training.tasks.code_family import code
from training.tasks.families import Instance, arithmetic, countdown, linear, word

FAMILIES: dict[str, Callable[[random.Random, int], Instance]] = {
    "arithmetic": arithmetic, "linear": linear, "countdown": countdown, "word": word, "code": code,
}
assert tuple(FAMILIES) == TASK_FAMILIES, "training.settings.TASK_FAMILIES must list FAMILIES"
SPLITS = ("train", "heldout")

TASK_SCHEMA = pa.schema([
    ("id", pa.string()), ("family", pa.string()), ("kind", pa.string()), ("difficulty", pa.int64()),
    ("split", pa.string()), ("template", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
    ("numbers", pa.list_(pa.int64())), ("tests", pa.string()), ("entry_point", pa.string()),
    ("solution", pa.string()), ("source", pa.string()), ("phrasing", pa.string()),
])
EXCLUDED_SCHEMA = pa.schema([
    ("source", pa.string()), ("line", pa.int64()), ("family", pa.string()), ("reason", pa.string()),
    ("record", pa.string()),
])


class SplitLeakError(ValueError):
    """A template instance (or a prompt) found in both train and held-out."""


def split_of(template: str, heldout_share: float) -> str:
    """`heldout` for the instances whose hash falls below `heldout_share`, else `train`."""
    bucket = int.from_bytes(hashlib.blake2b(f"seekflow-split:{template}".encode(), digest_size=8).digest(), "big")
    return "heldout" if bucket / 2**64 < heldout_share else "train"


def task_id(template: str) -> str:
    return hashlib.blake2b(template.encode(), digest_size=8).hexdigest()


def task_row(inst: Instance, difficulty: int, split: str, source: str = "generated") -> dict:
    return {
        "id": f"{inst.family}-{task_id(inst.key)}", "family": inst.family, "kind": inst.kind,
        "difficulty": difficulty, "split": split, "template": inst.key, "prompt": inst.prompt,
        "answer": inst.answer, "numbers": list(inst.numbers), "tests": inst.tests,
        "entry_point": inst.entry_point, "solution": inst.solution, "source": source, "phrasing": inst.phrasing,
    }


def excluded_row(source: str, line: int, family: str, reason: str, record: str) -> dict:
    return {"source": source, "line": line, "family": family, "reason": reason, "record": record}


def too_long(prompt: str, solution: str, cfg: TasksConfig) -> str | None:
    if len(prompt) > cfg.max_prompt_chars:
        return f"prompt_too_long:{len(prompt)}>{cfg.max_prompt_chars}"
    if len(solution) > cfg.max_solution_chars:
        return f"solution_too_long:{len(solution)}>{cfg.max_solution_chars}"
    return None


def draw_train_instance(family: str, difficulty: int, rng: random.Random, heldout_share: float,
                        attempts: int = 1000) -> Instance | None:
    """One instance on the train side of the split (what the worked examples use)."""
    gen = FAMILIES[family]
    for _ in range(attempts):
        inst = gen(rng, difficulty)
        if split_of(inst.key, heldout_share) == "train":
            return inst
    return None


def generate_cell(family: str, difficulty: int, cfg: TasksConfig, seen: set[str],
                  excluded: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Rows for one (family, difficulty): `count` tasks, `heldout_share` of them held out.

    `seen` holds the template instances already used (by any cell), so no instance repeats.
    Returns the rows and the shortfall per split (0 when the quota was met).
    """
    count = cfg.counts.get(family, 0)
    want = {"heldout": round(count * cfg.heldout_share)}
    want["train"] = count - want["heldout"]
    got: dict[str, list[dict]] = {s: [] for s in SPLITS}
    rng = random.Random(f"{cfg.seed}:{family}:{difficulty}")
    gen = FAMILIES[family]
    # rejection sampling: a small held-out share needs ~1/share draws per held-out task
    budget = 200 + 50 * count
    for _ in range(budget):
        if all(len(got[s]) >= want[s] for s in SPLITS):
            break
        inst = gen(rng, difficulty)
        split = split_of(inst.key, cfg.heldout_share)
        if inst.key in seen or len(got[split]) >= want[split]:
            continue
        seen.add(inst.key)
        reason = too_long(inst.prompt, inst.solution, cfg)
        if reason:
            excluded.append(excluded_row("generated", -1, family, reason, json.dumps(task_row(inst, difficulty, split))))
            continue
        got[split].append(task_row(inst, difficulty, split))
    shortfall = {s: want[s] - len(got[s]) for s in SPLITS}
    return got["train"] + got["heldout"], shortfall


def check_split_disjoint(table: pa.Table) -> dict[str, int]:
    """Raise `SplitLeakError` if a template instance, or a prompt, is in both splits.

    Returns the number of distinct template instances per split.
    """
    rows = table.select(["split", "template", "prompt"]).to_pylist()
    by_split: dict[str, dict[str, set[str]]] = {s: {"template": set(), "prompt": set()} for s in SPLITS}
    for r in rows:
        if r["split"] not in by_split:
            raise SplitLeakError(f"split {r['split']!r} of template {r['template']!r}; accepted: {SPLITS}")
        by_split[r["split"]]["template"].add(r["template"])
        by_split[r["split"]]["prompt"].add(" ".join(r["prompt"].lower().split()))
    for column in ("template", "prompt"):
        both = by_split["train"][column] & by_split["heldout"][column]
        if both:
            raise SplitLeakError(f"{len(both)} {column}(s) in both train and heldout, e.g. {sorted(both)[:5]}")
    return {s: len(v["template"]) for s, v in by_split.items()}


def make_tasks(cfg: TasksConfig, out_dir: Path) -> dict:
    """Generate every family at every difficulty, load the user sets, and write
    `out_dir/tasks.parquet`, `out_dir/excluded.parquet` and `out_dir/summary.json`."""
    from training.tasks.loaders import load_user_set

    seen: set[str] = set()
    rows: list[dict] = []
    excluded: list[dict] = []
    shortfall: dict[str, int] = {}
    for family in FAMILIES:  # fixed order: a family's draws never depend on the others' keys
        if cfg.counts.get(family, 0) <= 0:
            continue
        for difficulty in cfg.difficulties:
            cell, short = generate_cell(family, difficulty, cfg, seen, excluded)
            rows += cell
            shortfall.update({f"{family}/{difficulty}/{s}": n for s, n in short.items() if n})
    for user_set in cfg.user_sets:
        user_rows, user_excluded = load_user_set(user_set, cfg, seen)
        rows += user_rows
        excluded += user_excluded
    table = pa.Table.from_pylist(rows, schema=TASK_SCHEMA)
    instances = check_split_disjoint(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_dir / "tasks.parquet")
    pq.write_table(pa.Table.from_pylist(excluded, schema=EXCLUDED_SCHEMA), out_dir / "excluded.parquet")
    summary = {
        "tasks": len(rows),
        "by_split": dict(Counter(r["split"] for r in rows)),
        "by_family": _counts(rows),
        "template_instances": instances,
        "shortfall": shortfall,
        "excluded": len(excluded),
        "excluded_by_reason": dict(Counter(e["reason"].split(":")[0] for e in excluded)),
        "heldout_share": cfg.heldout_share,
        "seed": cfg.seed,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _counts(rows: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    """family -> difficulty -> split -> tasks."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for (family, difficulty, split), n in sorted(Counter((r["family"], r["difficulty"], r["split"]) for r in rows).items()):
        out.setdefault(family, {}).setdefault(str(difficulty), {})[split] = n
    return out
