"""Build the task table from a profile, and check the held-out split against a corpus.

    python -m training.tasks --out DIR [--profile tiny] [--corpus DEDUPLICATED_CORPUS_DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from training.settings import load_profile
from training.tasks.build import make_tasks
from training.tasks.decontaminate import contamination


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for tasks.parquet, excluded.parquet, summary.json")
    parser.add_argument("--profile", default=None, help="profile name (default: $SEEKFLOW_PROFILE, else tiny)")
    parser.add_argument("--corpus", type=Path, help="a deduplicated_corpus folder to check the held-out prompts against")
    args = parser.parse_args(argv)
    cfg = load_profile(args.profile).tasks
    summary = make_tasks(cfg, args.out)
    if args.corpus:
        rows = pq.read_table(args.out / "tasks.parquet", columns=["id", "split", "prompt"]).to_pylist()
        summary["contamination"] = contamination({r["id"]: r["prompt"] for r in rows if r["split"] == "heldout"},
                                                 args.corpus, cfg.decontamination_n, cfg.decontamination_whole_prompt_tokens)
        summary["contamination"].pop("contaminated_ids")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
