"""The built-in prose sources a Python machine already has, as plain document dicts.

- `python-metadata`: the long description (README) of every installed distribution.
- `pydoc-topics`: the standard library's documentation topics (what `help("with")` shows).
"""

from __future__ import annotations

import importlib.metadata


def _python_metadata() -> list[dict]:
    docs = {}
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        name = meta.get("Name") or ""
        if not name:
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


def builtin_documents(name: str) -> list[dict]:
    if name == "python-metadata":
        return _python_metadata()
    if name == "pydoc-topics":
        return _pydoc_topics()
    raise ValueError(f"unknown built-in source {name!r}; accepted: python-metadata, pydoc-topics")
