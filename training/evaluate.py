"""Evaluate a model on held-out reasoning tasks: k samples per task, rule rewards, pass@1 with a CI.

    python -m training.evaluate --model DIR --tasks TASKS_PARQUET [--k 4] [--split heldout] [--out FILE]

DIR is any checkpoint or Hugging Face export directory (`config.json`, safetensors and
`tokenizer.json`). Each task of the split is rendered as a chat (training/tasks/format.py) and
sampled k times, as in the R1 paper (temperature 0.6, top-p 0.95), in batches through the model's
latent cache until `<|end_of_text|>`. `training.rewards.score_batch` scores every response for
accuracy, format and language consistency.

Reported per family, per (family, difficulty) and overall:
- pass@1: per task, the mean accuracy of its k samples; then the mean over tasks, with a 95%
  t interval over tasks (`pass_at_1_with_ci`: tasks are the unit, the k samples only sharpen each
  task's estimate, as in Miller 2024, "Adding error bars to evals");
- cons@k: a task counts when the majority answer of its k samples (`majority_vote` over the
  rewards' `extract_answer`: a malformed response does not vote) is correct. NOTE: answers vote
  as strings, so for countdown (expressions) and code (programs) two different correct answers
  split the vote; cons@k is meaningful mainly for math;
- format adherence and language consistency: the mean of those rewards over all samples;
- mean response length in generated tokens (EOS not counted), and the share that stopped at EOS.

Outputs: FILE (Parquet, one row per sample: task id, family, difficulty, sample index, response,
extracted answer, each reward, length) and FILE with suffix `.summary.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from training.rewards import extract_answer, score_batch

COMPONENTS = ("accuracy", "format", "language")


@dataclass
class EvalConfig:
    k: int = 4  # samples per task
    temperature: float = 0.6  # R1's evaluation setting
    top_p: float = 0.95
    max_new_tokens: int = 256  # capped by the model's context less the prompt
    batch_size: int = 64  # sequences per generate call
    split: str = "heldout"
    limit: int = 0  # evaluate the first `limit` tasks of the split (by id order); 0: all
    seed: int = 0
    sandbox_workers: int = 2  # code tasks' test runs in parallel
    device: str = "auto"  # auto: cuda when available
    confidence: float = 0.95


# ---------------------------------------------------------------------------------------------
# statistics


def pass_at_1_with_ci(per_task: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean over tasks of each task's mean accuracy, with a t interval.

    The interval is mean +- t_{1-a/2, n-1} * sd / sqrt(n) over the n per-task means, clipped to
    [0, 1]. NOTE: when every task scores 0 (or 1) the spread is 0 and a t interval collapses to a
    point; treating tasks as Bernoulli trials, the exact (Clopper-Pearson) bound for 0 of n is
    1 - (a/2)^(1/n), used instead (mirrored for n of n). One task gives [0, 1].
    """
    from scipy.stats import t as student_t

    n = len(per_task)
    if n == 0:
        raise ValueError("pass_at_1_with_ci: no tasks")
    mean = sum(per_task) / n
    alpha = 1 - confidence
    if n == 1:
        return mean, 0.0, 1.0
    if all(x == 0 for x in per_task):
        return 0.0, 0.0, 1 - (alpha / 2) ** (1 / n)
    if all(x == 1 for x in per_task):
        return 1.0, (alpha / 2) ** (1 / n), 1.0
    sd = math.sqrt(sum((x - mean) ** 2 for x in per_task) / (n - 1))
    half = float(student_t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, int | None]:
    """(the most frequent answer, the index of its first sample); None answers do not vote.

    Ties go to the answer seen first, so the vote is deterministic. Answers are compared after
    collapsing whitespace. No answer at all: (None, None).
    """
    norm = [" ".join(a.split()) if a is not None else None for a in answers]
    counts = Counter(a for a in norm if a is not None)
    if not counts:
        return None, None
    top = max(counts.values())
    for i, a in enumerate(norm):
        if a is not None and counts[a] == top:
            return a, i
    raise AssertionError("unreachable")


def summarize(rows: list[dict], k: int, confidence: float = 0.95) -> dict:
    """The report for one group of sample rows (one family, or all)."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task_id"]].append(r)
    per_task = [sum(s["accuracy"] for s in samples) / len(samples) for samples in by_task.values()]
    mean, low, high = pass_at_1_with_ci(per_task, confidence)
    cons = 0
    for samples in by_task.values():
        samples = sorted(samples, key=lambda s: s["sample"])
        _, first = majority_vote([s["answer"] for s in samples])
        cons += first is not None and samples[first]["accuracy"] >= 1.0
    n = len(rows)
    return {
        "tasks": len(by_task), "samples": n, "pass@1": mean, "pass@1_ci": [low, high],
        f"cons@{k}": cons / len(by_task), "format": sum(r["format"] for r in rows) / n,
        "language": sum(r["language"] for r in rows) / n, "mean_length": sum(r["length"] for r in rows) / n,
        "stopped": sum(r["stopped"] for r in rows) / n,
    }


def report(rows: list[dict], k: int, confidence: float = 0.95) -> dict:
    """Overall, per family and per family/difficulty summaries."""
    groups: dict[str, dict[str, list[dict]]] = {"by_family": defaultdict(list), "by_family_difficulty": defaultdict(list)}
    for r in rows:
        groups["by_family"][r["family"]].append(r)
        groups["by_family_difficulty"][f"{r['family']}/{r['difficulty']}"].append(r)
    return {"overall": summarize(rows, k, confidence),
            **{name: {key: summarize(g, k, confidence) for key, g in sorted(group.items())}
               for name, group in groups.items()}}


# ---------------------------------------------------------------------------------------------
# sampling and scoring


def sample_responses(model, tokenizer, prompts: list[str], cfg: EvalConfig) -> list[list[tuple[str, int, bool]]]:
    """k responses per prompt: (text, generated tokens without EOS, stopped at EOS)."""
    import torch

    from training.corpus.tokenizer import EOS, PAD
    from training.model import generate
    from training.tasks.format import render_prompt

    eos, pad = tokenizer.token_to_id(EOS), tokenizer.token_to_id(PAD)
    if eos is None:
        raise ValueError(f"the tokenizer has no {EOS} token; expected Seekflow's BPE tokenizer (training/corpus/tokenizer.py)")
    encoded = [e.ids for e in tokenizer.encode_batch([render_prompt(p) for p in prompts], add_special_tokens=False)]
    jobs = sorted(((len(ids), t, s) for t, ids in enumerate(encoded) for s in range(cfg.k)), reverse=True)
    device = model.embed_tokens.weight.device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    out: list[list] = [[None] * cfg.k for _ in prompts]
    for start in range(0, len(jobs), cfg.batch_size):
        batch = jobs[start : start + cfg.batch_size]
        longest = batch[0][0]  # jobs are sorted longest first
        room = model.config.max_position_embeddings - longest
        if room < 1:
            raise ValueError(f"a prompt of {longest} tokens fills the model's context ({model.config.max_position_embeddings})")
        result = generate(model, [encoded[t] for _, t, _ in batch], min(cfg.max_new_tokens, room),
                          temperature=cfg.temperature, top_p=cfg.top_p, stop_token_ids=[eos],
                          pad_token_id=pad if pad is not None else eos, generator=gen)
        tokens, _ = result.as_lists()
        for (_, t, s), ids in zip(batch, tokens):
            stopped = bool(ids) and ids[-1] == eos
            ids = ids[:-1] if stopped else ids
            out[t][s] = (tokenizer.decode(ids, skip_special_tokens=False), len(ids), stopped)
    return out


def score_rows(tasks: list[dict], responses: list[str], sandbox) -> list[dict[str, float]]:
    """Every component of `COMPONENTS` for each (task, response) pair, through training.rewards."""
    mappings = [{"kind": t["kind"], "answer": t["answer"], "numbers": list(t["numbers"] or []),
                 "tests": t["tests"], "entry_point": t["entry_point"]} for t in tasks]
    return score_batch(mappings, responses, components=COMPONENTS, sandbox=sandbox)


def load_tasks(path: Path, split: str, limit: int = 0) -> list[dict]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--tasks {path}: no such file; expected the reasoning_tasks table (tasks.parquet)")
    rows = pq.read_table(path).to_pylist()
    chosen = sorted((r for r in rows if r["split"] == split), key=lambda r: r["id"])
    if not chosen:
        raise ValueError(f"{path}: no task with split {split!r}; splits present: {sorted({r['split'] for r in rows})}")
    return chosen[:limit] if limit > 0 else chosen


def evaluate(model_dir: Path, tasks_path: Path, out: Path, cfg: EvalConfig) -> dict:
    """Sample, score and write the results table and summary; returns the summary."""
    import torch
    from tokenizers import Tokenizer

    from training.model import from_pretrained
    from training.sandbox import SandboxPool

    model_dir = Path(model_dir)
    if not (model_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{model_dir}/tokenizer.json not found: --model must hold the model and its tokenizer")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    tasks = load_tasks(tasks_path, cfg.split, cfg.limit)
    started = time.time()
    model = from_pretrained(model_dir, device=device, mtp=False)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    samples = sample_responses(model, tokenizer, [t["prompt"] for t in tasks], cfg)
    generated = time.time()
    pairs = [(task, s, resp) for task, resps in zip(tasks, samples) for s, resp in enumerate(resps)]
    with SandboxPool(cfg.sandbox_workers) as pool:
        scores = score_rows([p[0] for p in pairs], [p[2][0] for p in pairs], pool)
    rows = [{"task_id": task["id"], "family": task["family"], "kind": task["kind"], "difficulty": task["difficulty"],
             "sample": s, "response": text, "answer": extract_answer(text), "gold": task["answer"],
             **{c: float(sc.get(c, 0.0)) for c in COMPONENTS}, "length": length, "stopped": stopped}
            for (task, s, (text, length, stopped)), sc in zip(pairs, scores)]
    summary = {"model": str(model_dir), "tasks_file": str(tasks_path), "config": asdict(cfg),
               "seconds": {"generate": round(generated - started, 1), "score": round(time.time() - generated, 1)},
               **report(rows, cfg.k, cfg.confidence)}
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    summary_path(out).write_text(json.dumps(summary, indent=2))
    return summary


def summary_path(out: Path) -> Path:
    return out.with_suffix(".summary.json")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="checkpoint or Hugging Face export directory")
    parser.add_argument("--tasks", required=True, type=Path, help="the task table (reasoning_tasks' tasks.parquet)")
    parser.add_argument("--out", type=Path, help="results Parquet (default: $SEEKFLOW_HOME/eval/<model>/results.parquet)")
    defaults = EvalConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    cfg = EvalConfig(**{name: getattr(args, name) for name in asdict(defaults)})
    if args.out is None:
        from training.settings import seekflow_home

        args.out = seekflow_home() / "eval" / args.model.resolve().name / "results.parquet"
    summary = evaluate(args.model, args.tasks, args.out, cfg)
    overall = summary["overall"]
    lo, hi = overall["pass@1_ci"]
    print(f"{overall['tasks']} tasks x {cfg.k}: pass@1 {overall['pass@1']:.3f} [{lo:.3f}, {hi:.3f}], "
          f"cons@{cfg.k} {overall[f'cons@{cfg.k}']:.3f}, format {overall['format']:.3f}, "
          f"language {overall['language']:.3f}, length {overall['mean_length']:.1f}; wrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
