"""Verifiable reasoning tasks for R1-Zero: generated families, user sets, split and decontamination.

    from training.tasks import make_tasks, check_split_disjoint, render_prompt

- families.py / code_family.py: generators `(rng, difficulty) -> Instance` with worked solutions
- build.py: the split (by template instance), the Parquet table, `make_tasks`
- loaders.py: the user's GSM8K/MATH-style and code JSONL files
- worked.py: worked examples for the pretraining mix (train instances only)
- decontaminate.py: n-gram overlap of held-out prompts with the corpus
- format.py: the chat and response format every stage renders a task with
"""

from training.tasks.build import (
    EXCLUDED_SCHEMA,
    FAMILIES,
    TASK_SCHEMA,
    SplitLeakError,
    check_split_disjoint,
    make_tasks,
    split_of,
)
from training.tasks.format import render_example, render_prompt, response

__all__ = [
    "EXCLUDED_SCHEMA", "FAMILIES", "TASK_SCHEMA", "SplitLeakError", "check_split_disjoint", "make_tasks",
    "render_example", "render_prompt", "response", "split_of",
]
