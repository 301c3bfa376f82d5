"""SEEKFLOW_HOME wiring for Dagster: the instance lives in $SEEKFLOW_HOME/dagster (DAGSTER_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

from training.settings import seekflow_home

DAGSTER_YAML = """\
# written by Seekflow on first use; edit freely
telemetry:
  enabled: false
"""


def dagster_home() -> Path:
    """Point DAGSTER_HOME into SEEKFLOW_HOME (unless set) and make sure it has a dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or seekflow_home() / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
