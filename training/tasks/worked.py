"""Worked examples for the pretraining mix: train-split task instances rendered as whole chats.

A model of a few hundred thousand parameters will not discover the `<think>...</think>
<answer>...</answer>` format, nor single-digit sums, from Python's standard library alone; GRPO
needs some reward signal from the first rollouts. These documents give it: each holds several
examples exactly as the model later sees a task (format.py), drawn from the same generators and
the same split as the task table (build.py), keeping only `train` instances.

A share of them (`untagged_share`) keeps the working but ends in `Answer: 13` instead of the tags,
as solutions are written on the web. A base trained on both answers in the task format only part
of the time; R1-Zero's format and accuracy rewards then have a behaviour to teach that carries over
to tasks it never saw (the tiny profile says what was measured).

The built-in web source `worked-examples` (training/corpus/builtin.py) yields these documents;
the quality filters let them through (`web_filters.trusted_sources`) and dedup treats them as
any other document.
"""

from __future__ import annotations

import random

from training.rewards.format import split_response
from training.settings import TasksConfig, WorkedExamplesConfig
from training.tasks.build import draw_train_instance
from training.tasks.families import Instance
from training.tasks.format import render_document


def worked_example_documents(cfg: WorkedExamplesConfig) -> list[dict]:
    """Documents `{uri, text, meta}` holding `cfg.examples` train-split examples in all."""
    share = cfg.heldout_share if cfg.heldout_share is not None else TasksConfig().heldout_share
    rng = random.Random(f"worked-examples:{cfg.seed}")
    style = random.Random(f"worked-examples-style:{cfg.seed}")  # apart, so the instances drawn do not depend on it
    docs, examples = [], []
    for _ in range(cfg.examples):
        family, difficulty = rng.choice(cfg.families), rng.choice(cfg.difficulties)
        inst = draw_train_instance(family, difficulty, rng, share)
        if inst is None:  # no train instance in 1000 draws: only with a held-out share near 1
            raise ValueError(f"worked examples: no train instance of {family} at difficulty {difficulty} "
                             f"with heldout_share {share}")
        untagged = style.random() < cfg.untagged_share
        examples.append((inst.prompt, untagged_solution(inst) if untagged else inst.solution, inst.key))
        if len(examples) == cfg.examples_per_document:
            docs.append(_document(len(docs), examples, cfg.seed))
            examples = []
    if examples:
        docs.append(_document(len(docs), examples, cfg.seed))
    return docs


def untagged_solution(inst: Instance) -> str:
    """`inst`'s worked solution without the think and answer tags: the working, then `Answer: <final>`."""
    reasoning, final = split_response(inst.solution)
    return f"{reasoning}\nAnswer: {final}"


def _document(index: int, examples: list[tuple[str, str, str]], seed: int) -> dict:
    # the template instances travel in `meta`, so anyone can re-check the split on the corpus
    return {"uri": f"worked-examples://{seed}/{index}", "text": render_document([e[:2] for e in examples]),
            "meta": {"examples": len(examples), "templates": [e[2] for e in examples]}}
