"""The SFT sets of the R1 recipe: cold start and rejection sampling, as `sft.parquet` + `excluded.parquet`.

    build_cold_start(r1_zero_samples, tasks_parquet, cfg, out)        R1's cold-start data
    build_rejection_sampled(model_dir, tasks_parquet, corpus_dir, cfg, out)   R1's stage-3 SFT data

Both write `<out>/sft.parquet` (columns `SFT_SCHEMA`: one example per row, what training/sft.py
trains on), `<out>/excluded.parquet` (the same columns plus `reason`: every candidate that was
judged and not taken) and `<out>/summary.json` (the returned summary: examples per source, acceptance
per family, the reasoning/general mix, shortfalls).

Sources (the `source` column):
- `r1_zero` / `rejection`: a model's own samples of train-split tasks (`sample_and_filter`), k per
  prompt, kept only when correct by the rule rewards (accuracy 1), well-formed (format 1), readable
  (`readability_reason`: one script in the reasoning, no stray special tokens, length bounds, stopped
  at EOS), at most `max_per_task` per task and no repeated response. Passing samples beyond the
  requested count are excluded as `over_quota`.
- `worked`: the worked solutions the task generators wrote (the tasks table's `solution`, train
  split only), judged by the same rules, drawn in a seeded order until `worked` of them pass.
- `general` (rejection sampling only): non-reasoning examples from the corpus at
  `reasoning_to_general` reasoning examples per general one (training/general_prompts.py).

Column meanings: `kind` is "reasoning" or "general"; `family` the task family (or the general kind);
`task_id` the task's id (or the source document's); `answer` the final answer the response gives;
`reference` what it is checked against (the task's gold answer, or the general reference text).

NOTE: the issue asks for cold-start responses with "reasoning in <think>, then a short summary and
the answer". The format reward accepts nothing between `</think>` and `<answer>`, and the accuracy
rewards grade the whole answer block, so a summary has no place of its own: the examples keep the
plain `<think>...</think> <answer>...</answer>` shape that every reward and the evaluation read.
NOTE: a reasoning block without letters (`<think>7 + 5 = 12.</think>`) mixes no languages: its
language consistency is 1 (training/rewards/language.py).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from training.corpus.tokenizer import REASONING, SPECIAL_TOKENS
from training.rewards import extract_answer
from training.rewards.format import split_response
from training.settings import SFTDataConfig

SFT_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("kind", pa.string()), ("family", pa.string()),
    ("task_id", pa.string()), ("prompt", pa.string()), ("response", pa.string()), ("answer", pa.string()),
    ("reference", pa.string()),
])
EXCLUDED_SCHEMA = pa.schema([*SFT_SCHEMA, ("reason", pa.string())])
SAMPLE_COLUMNS = ("task_id", "family", "sample", "response", "length", "stopped", "accuracy", "format", "language", "reason")
SCORES = ("accuracy", "format", "language")


# ---------------------------------------------------------------------------------------------
# tasks


def read_tasks(tasks_parquet: Path) -> list[dict]:
    path = Path(tasks_parquet)
    path = path / "tasks.parquet" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected the reasoning_tasks table (tasks.parquet)")
    return pq.read_table(path).to_pylist()


def train_tasks(tasks: list[dict], cfg: SFTDataConfig) -> list[dict]:
    """Train-split tasks of cfg.families (all when empty), by id; a seeded draw of cfg.prompts of them."""
    rows = sorted((t for t in tasks if t["split"] == "train" and (not cfg.families or t["family"] in cfg.families)),
                  key=lambda t: t["id"])
    if not rows:
        raise ValueError(f"no train task in families {cfg.families or 'all'} "
                         f"(splits present: {sorted({t['split'] for t in tasks})})")
    if cfg.prompts and cfg.prompts < len(rows):
        rows = sorted(random.Random(f"sft-prompts:{cfg.seed}").sample(rows, cfg.prompts), key=lambda t: t["id"])
    return rows


def reward_task(task: dict) -> dict:
    """The keys training.rewards reads, from a tasks-table row."""
    return {"kind": task["kind"], "answer": task["answer"], "numbers": list(task.get("numbers") or []),
            "tests": task.get("tests"), "entry_point": task.get("entry_point")}


# ---------------------------------------------------------------------------------------------
# judging candidates


def readability_reason(response: str, language: float, cfg: SFTDataConfig, stopped: bool = True) -> str | None:
    """Why a well-formed response is not readable enough for SFT, or None."""
    if not stopped:
        return "truncated"  # hit max_new_tokens before EOS
    other = [t for t in SPECIAL_TOKENS if t not in REASONING and t in response]
    if other:
        return f"special_token:{other[0]}"
    if len(response) < cfg.min_response_chars:
        return f"too_short:{len(response)}<{cfg.min_response_chars}"
    if len(response) > cfg.max_response_chars:
        return f"too_long:{len(response)}>{cfg.max_response_chars}"
    if language < 1.0:
        parts = split_response(response)
        if parts is None or any(ch.isalpha() for ch in parts[0]):  # letters, some outside the target script
            return f"language:{language:.2f}"
    return None


def judge(candidate: dict, cfg: SFTDataConfig) -> str | None:
    """Why a scored candidate (`accuracy`, `format`, `language`, `response`, optional `stopped`) is
    not kept, or None: the shape first (a malformed response is never correct), then correctness,
    then readability."""
    if candidate["format"] < 1.0:
        return "format"
    if candidate["accuracy"] < 1.0:
        return "incorrect"
    return readability_reason(candidate["response"], candidate["language"], cfg, candidate.get("stopped", True))


def filter_candidates(candidates: list[dict], cfg: SFTDataConfig) -> tuple[list[dict], list[dict]]:
    """(kept, rejected): `judge` on each, then no repeated (task, response) and at most
    cfg.max_per_task per task, in (task_id, sample) order. Rejected rows carry `reason`."""
    kept, rejected = [], []
    per_task: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    for c in sorted(candidates, key=lambda c: (c["task_id"], c.get("sample", 0))):
        key = (c["task_id"], " ".join(c["response"].split()))
        reason = judge(c, cfg)
        if reason is None and key in seen:
            reason = "duplicate"
        if reason is None and per_task[c["task_id"]] >= cfg.max_per_task:
            reason = "per_task_cap"
        if reason is None:
            seen.add(key)
            per_task[c["task_id"]] += 1
            kept.append({**c, "reason": ""})
        else:
            rejected.append({**c, "reason": reason})
    return kept, rejected


def score_candidates(candidates: list[dict], tasks_by_id: dict[str, dict], cfg: SFTDataConfig, pool=None) -> list[dict]:
    """Each candidate with the rule rewards of its response (training.rewards.score_batch)."""
    from training.rewards import score_batch

    if not candidates:
        return []
    scores = score_batch([reward_task(tasks_by_id[c["task_id"]]) for c in candidates], [c["response"] for c in candidates],
                         SCORES, pool, cfg.language)
    return [{**c, **{k: float(s[k]) for k in SCORES}} for c, s in zip(candidates, scores)]


def sample_and_filter(model_dir: Path, tasks: list[dict], k: int, temperature: float, top_p: float,
                      max_new_tokens: int, cfg: SFTDataConfig, out: Path | None = None) -> tuple[list[dict], list[dict]]:
    """k samples of each task from the model in `model_dir` (training/evaluate.py's batched sampler on
    the latent cache), scored by the rule rewards and judged (`filter_candidates`).

    Returns (kept, rejected): dicts with task_id, family, sample, response, length, stopped, the three
    scores and `reason` ("" when kept). With `out`, all of them go to `<out>/samples.parquet`."""
    import torch
    from tokenizers import Tokenizer

    from training.evaluate import EvalConfig, sample_responses
    from training.model import from_pretrained
    from training.sandbox import SandboxPool

    model_dir = Path(model_dir)
    if not (model_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{model_dir}/tokenizer.json not found: the model directory must hold its tokenizer")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = from_pretrained(model_dir, device=device, mtp=False)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ecfg = EvalConfig(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                      batch_size=cfg.batch_size, seed=cfg.seed)
    samples = sample_responses(model, tokenizer, [t["prompt"] for t in tasks], ecfg)
    del model
    candidates = [{"task_id": t["id"], "family": t["family"], "sample": s, "response": text, "length": length,
                   "stopped": stopped} for t, resps in zip(tasks, samples) for s, (text, length, stopped) in enumerate(resps)]
    with SandboxPool(cfg.sandbox_workers) as pool:
        scored = score_candidates(candidates, {t["id"]: t for t in tasks}, cfg, pool)
    kept, rejected = filter_candidates(scored, cfg)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        rows = sorted(kept + rejected, key=lambda c: (c["task_id"], c["sample"]))
        pq.write_table(pa.Table.from_pylist([{c: r[c] for c in SAMPLE_COLUMNS} for r in rows]), Path(out) / "samples.parquet")
    return kept, rejected


# ---------------------------------------------------------------------------------------------
# rows and selection


def reasoning_row(source: str, task: dict, response: str) -> dict:
    digest = hashlib.blake2b(f"{source}\0{task['id']}\0{response}".encode(), digest_size=8).hexdigest()
    return {"id": f"{source}-{digest}", "source": source, "kind": "reasoning", "family": task["family"],
            "task_id": task["id"], "prompt": task["prompt"], "response": response,
            "answer": extract_answer(response) or "", "reference": str(task["answer"])}


def _excluded(source: str, task: dict | None, candidate: dict, reason: str) -> dict:
    if task is None:  # a sample of a task the table does not hold
        row = {c: "" for c in SFT_SCHEMA.names}
        row.update(id=f"{source}-unknown", source=source, kind="reasoning", task_id=str(candidate.get("task_id")),
                   response=candidate.get("response", ""))
        return {**row, "reason": reason}
    return {**reasoning_row(source, task, candidate["response"]), "reason": reason}


def split_samples(samples: list[dict], tasks_by_id: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    """(samples of train tasks, (sample, reason) of the others): held-out or unknown tasks never train."""
    usable, refused = [], []
    for s in samples:
        task = tasks_by_id.get(s.get("task_id"))
        if task is None:
            refused.append((s, "unknown_task"))
        elif task["split"] != "train":
            refused.append((s, f"{task['split']}_task"))
        else:
            usable.append(s)
    return usable, refused


def take_sampled(source: str, samples: list[dict], tasks_by_id: dict[str, dict], cfg: SFTDataConfig, pool=None):
    """A model's samples -> (rows taken, excluded rows, acceptance per family, available count)."""
    usable, refused = split_samples(samples, tasks_by_id)
    if any(k not in s for s in usable for k in SCORES):
        usable = score_candidates([{k: v for k, v in s.items() if k not in SCORES} for s in usable], tasks_by_id, cfg, pool)
    kept, rejected = filter_candidates(usable, cfg)
    judged = Counter(tasks_by_id[s["task_id"]]["family"] for s in usable)
    passed = Counter(tasks_by_id[s["task_id"]]["family"] for s in kept)
    acceptance = {f: passed[f] / judged[f] for f in sorted(judged)}
    random.Random(f"{source}:{cfg.seed}").shuffle(kept)
    n = len(kept) if cfg.sampled < 0 else cfg.sampled
    excluded = [_excluded(source, tasks_by_id.get(s.get("task_id")), s, reason) for s, reason in refused]
    excluded += [_excluded(source, tasks_by_id[s["task_id"]], s, s["reason"]) for s in rejected]
    excluded += [_excluded(source, tasks_by_id[s["task_id"]], s, "over_quota") for s in kept[n:]]
    rows = [reasoning_row(source, tasks_by_id[s["task_id"]], s["response"]) for s in kept[:n]]
    return rows, excluded, acceptance, len(kept)


def take_worked(tasks: list[dict], cfg: SFTDataConfig, pool=None):
    """Up to cfg.worked worked solutions of train tasks that pass `judge`, drawn in a seeded order
    -> (rows, excluded rows, acceptance per family)."""
    candidates = [t for t in tasks if t["split"] == "train" and t.get("solution")
                  and (not cfg.families or t["family"] in cfg.families)]
    random.Random(f"worked:{cfg.seed}").shuffle(candidates)
    by_id = {t["id"]: t for t in candidates}
    rows, excluded, judged, passed = [], [], Counter(), Counter()
    position = 0
    while len(rows) < cfg.worked and position < len(candidates):
        chunk = candidates[position:position + (cfg.worked - len(rows)) + 8]  # a few spare for failures
        position += len(chunk)
        scored = score_candidates([{"task_id": t["id"], "response": t["solution"]} for t in chunk], by_id, cfg, pool)
        for t, s in zip(chunk, scored):
            reason = judge(s, cfg)
            judged[t["family"]] += 1
            if reason is None and len(rows) < cfg.worked:
                passed[t["family"]] += 1
                rows.append(reasoning_row("worked", t, t["solution"]))
            elif reason is not None:
                excluded.append(_excluded("worked", t, s, reason))
    return rows, excluded, {f: passed[f] / judged[f] for f in sorted(judged)}


# ---------------------------------------------------------------------------------------------
# the two sets


def write_sft(out: Path, rows: list[dict], excluded: list[dict], summary: dict) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SFT_SCHEMA), out / "sft.parquet")
    pq.write_table(pa.Table.from_pylist(excluded, schema=EXCLUDED_SCHEMA), out / "excluded.parquet")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarize(rows: list[dict], excluded: list[dict], acceptance: dict, available: dict, wanted: dict) -> dict:
    by_source = Counter(r["source"] for r in rows)
    kinds = Counter(r["kind"] for r in rows)
    total = len(rows)
    return {
        "examples": total,
        "by_source": dict(by_source),
        "by_family": dict(Counter(r["family"] for r in rows)),
        "available": available,
        "shortfall": {s: n - by_source[s] for s, n in wanted.items() if n >= 0 and by_source[s] < n},
        "acceptance": acceptance,
        "mix": {"reasoning": kinds["reasoning"] / total if total else 0.0,
                "general": kinds["general"] / total if total else 0.0,
                "reasoning_per_general": kinds["reasoning"] / kinds["general"] if kinds["general"] else None},
        "excluded": len(excluded),
        "excluded_by_reason": dict(Counter(e["reason"].split(":")[0] for e in excluded)),
    }


def _read_samples(samples: list[dict] | Path, tasks: list[dict], cfg: SFTDataConfig, out: Path) -> list[dict]:
    """The samples as dicts: given, read from a samples.parquet, or drawn from a model export."""
    if not isinstance(samples, (str, Path)):
        return list(samples)
    path = Path(samples)
    if (path / "config.json").is_file():  # a model: sample the train prompts here
        kept, rejected = sample_and_filter(path, train_tasks(tasks, cfg), cfg.samples_per_prompt, cfg.temperature,
                                           cfg.top_p, cfg.max_new_tokens, cfg, out)
        return kept + rejected
    path = path / "samples.parquet" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected sample_and_filter's samples.parquet, or a model export "
                                "directory (config.json) to sample from")
    return pq.read_table(path).to_pylist()


def build_cold_start(r1_zero_samples: list[dict] | Path, tasks_parquet: Path, cfg: SFTDataConfig, out: Path) -> dict:
    """Cold-start SFT data: R1-Zero samples that pass (`sampled` of them) plus `worked` worked solutions.

    `r1_zero_samples`: the R1-Zero export directory (config.json): cfg.samples_per_prompt samples of
    each train prompt are drawn here (`sample_and_filter`, samples.parquet in `out`); or the samples
    themselves, as dicts or a samples.parquet, with task_id and response and optionally sample,
    stopped and the three scores (as `sample_and_filter` returns them, kept and rejected alike: pass
    both, the acceptance rates are computed here); without scores they are scored here."""
    from training.sandbox import SandboxPool

    tasks = read_tasks(tasks_parquet)
    by_id = {t["id"]: t for t in tasks}
    samples = _read_samples(r1_zero_samples, tasks, cfg, Path(out))
    with SandboxPool(cfg.sandbox_workers) as pool:
        sampled, excluded, acc_sampled, available = take_sampled("r1_zero", samples, by_id, cfg, pool)
        worked, worked_excluded, acc_worked = take_worked(tasks, cfg, pool)
    rows = sampled + worked
    if not rows:
        raise ValueError(f"cold start: no example passed ({len(excluded)} samples excluded: "
                         f"{dict(Counter(e['reason'].split(':')[0] for e in excluded))}) and worked is {cfg.worked}")
    summary = summarize(rows, excluded + worked_excluded, {"r1_zero": acc_sampled, "worked": acc_worked},
                        {"r1_zero": available}, {"r1_zero": cfg.sampled, "worked": cfg.worked})
    return write_sft(out, rows, excluded + worked_excluded, summary)


def build_rejection_sampled(model_dir: Path, tasks_parquet: Path, corpus_dir: Path, cfg: SFTDataConfig, out: Path) -> dict:
    """Rejection-sampled SFT data: k samples per train prompt from the model in `model_dir`, the
    correct and readable ones kept (`sampled` of them), `worked` worked solutions (0 by default),
    then general examples from the corpus at cfg.reasoning_to_general reasoning per general one."""
    from training.general_prompts import general_examples
    from training.sandbox import SandboxPool

    tasks = read_tasks(tasks_parquet)
    by_id = {t["id"]: t for t in tasks}
    prompts = train_tasks(tasks, cfg)
    kept, rejected = sample_and_filter(model_dir, prompts, cfg.samples_per_prompt, cfg.temperature, cfg.top_p,
                                       cfg.max_new_tokens, cfg, out)
    with SandboxPool(cfg.sandbox_workers) as pool:
        sampled, excluded, acceptance, available = take_sampled("rejection", kept + rejected, by_id, cfg, pool)
        worked, worked_excluded, acc_worked = take_worked(tasks, cfg, pool)
    reasoning = sampled + worked
    n_general = round(len(reasoning) / cfg.reasoning_to_general) if cfg.reasoning_to_general > 0 else 0
    general, general_excluded, general_stats = general_examples(corpus_dir, n_general, cfg)
    rows = reasoning + general
    if not rows:
        raise ValueError(f"rejection sampling: no sample of {len(prompts)} prompts x {cfg.samples_per_prompt} passed "
                         f"({dict(Counter(e['reason'].split(':')[0] for e in excluded))}) and worked is {cfg.worked}; "
                         "set worked > 0 to add the task generators' solutions")
    tasks_with_kept = defaultdict(set)
    for s in kept:
        tasks_with_kept[s["family"]].add(s["task_id"])
    prompts_per_family = Counter(t["family"] for t in prompts)
    all_excluded = excluded + worked_excluded + general_excluded
    summary = summarize(rows, all_excluded, {"rejection": acceptance, "worked": acc_worked},
                        {"rejection": available, **{k: v for k, v in general_stats.items() if k.startswith("available.")}},
                        {"rejection": cfg.sampled, "worked": cfg.worked, "general": n_general})
    summary["tasks_solved_share"] = {f: len(tasks_with_kept[f]) / n for f, n in sorted(prompts_per_family.items())}
    summary["prompts"] = len(prompts)
    summary["general"] = general_stats
    return write_sft(out, rows, all_excluded, summary)
