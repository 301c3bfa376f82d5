"""Dagster resources every asset group shares: the profile and MLflow tracking."""


import os
from contextlib import contextmanager

import dagster as dg
import yaml

from training import tracking
from training.settings import DEFAULT_PROFILE, Profile, load_profile


class SeekflowProfile(dg.ConfigurableResource):
    """The profile (infra/profiles/<name>.yaml) with run-config overrides by dotted field name.

    Launchpad example:
        resources: {profile: {config: {overrides: {"web_filters.gopher_quality.min_doc_words": "30"}}}}
    Values are YAML, so "30", "0.5", "true" and "[a, b]" arrive typed.
    """

    name: str = ""  # empty: $SEEKFLOW_PROFILE, else tiny
    overrides: dict[str, str] = {}

    def resolved_name(self) -> str:
        return self.name or os.environ.get("SEEKFLOW_PROFILE") or DEFAULT_PROFILE

    def load(self) -> Profile:
        return load_profile(self.resolved_name(), {k: yaml.safe_load(v) for k, v in self.overrides.items()})


class MLflowTracking(dg.ConfigurableResource):
    """MLflow: a parent run per Dagster run and a nested run per materialization.

    `tracking_uri` empty means $MLFLOW_TRACKING_URI, else SQLite under SEEKFLOW_HOME.
    """

    tracking_uri: str = ""

    @contextmanager
    def asset_run(self, context: dg.AssetExecutionContext, code_version: str, tags: dict | None = None):
        tracking.configure(self.tracking_uri or None)
        asset = context.asset_key.to_user_string()
        with tracking.asset_run(context.run_id, context.job_name or "", asset, code_version, tags) as run:
            yield run
