"""The built-in prose sources a Python machine already has, as plain document dicts.

- `python-metadata`: the long description (README) of every installed distribution but Seekflow's own.
- `pydoc-topics`: the standard library's documentation topics (what `help("with")` shows).
- `worked-examples`: generated reasoning tasks with worked solutions, rendered as chats, from the
  train side of the tasks split only (training/tasks/worked.py); `options` is the JSON of
  `corpus.worked_examples`.
"""

from __future__ import annotations

import importlib.metadata
import json

# NOTE: not Seekflow's own distribution: an editable install's metadata holds this README, a text
# about the pipeline itself rather than a source. Gopher's quality filter drops it today (too few
# alphabetic words), but an edit could let it through and change the corpus, and with it every
# trained figure, for a documentation change. The other distributions tie the corpus to the
# package versions the environment holds (a venv installed on another day may differ).
OWN_DISTRIBUTION = "seekflow"


def _python_metadata() -> list[dict]:
    docs = {}
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        name = meta.get("Name") or ""
        if not name or name.lower() == OWN_DISTRIBUTION:
            continue
        # the body of METADATA is the long description; old-style metadata keeps it in a header
        text = meta.get_payload() or meta.get("Description") or ""
        uri = f"python-metadata://{name}/{meta.get('Version', '')}"
        docs[uri] = {
            "uri": uri,
            "text": text,
            "meta": {"package": name, "version": meta.get("Version", ""),
                     "content_type": meta.get("Description-Content-Type", "")},
        }
    return [docs[k] for k in sorted(docs)]


def _pydoc_topics() -> list[dict]:
    from pydoc_data.topics import topics

    return [{"uri": f"pydoc-topics://{name}", "text": text, "meta": {"topic": name}} for name, text in sorted(topics.items())]


def _worked_examples(options: str) -> list[dict]:
    from training.settings import WorkedExamplesConfig
    from training.tasks.worked import worked_example_documents

    return worked_example_documents(WorkedExamplesConfig(**json.loads(options or "{}")))


def builtin_documents(name: str, options: str = "") -> list[dict]:
    if name == "python-metadata":
        return _python_metadata()
    if name == "pydoc-topics":
        return _pydoc_topics()
    if name == "worked-examples":
        return _worked_examples(options)
    raise ValueError(f"unknown built-in source {name!r}; accepted: python-metadata, pydoc-topics, worked-examples")
