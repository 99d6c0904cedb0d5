"""Policies as a resource: the directory (and universe file) are run configuration."""

from __future__ import annotations

from datetime import date

import dagster as dg
from pydantic import PrivateAttr

from ais_pipelines.config import Policies


class PoliciesResource(dg.ConfigurableResource):
    """Loads ``policies/*.yaml`` once per run; invalid files fail the step (fail closed).

    Issue 13, point in time: in a run of as-of partition D every file is the version in force
    on D (``ais_pipelines/policy_versions.py``); a run without a partition reads the current files."""

    directory: str | None = None
    universe_file: str | None = None
    _policies: Policies | None = PrivateAttr(default=None)
    _as_of: date | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        key = run.tags.get("dagster/partition") if run is not None else None
        try:
            self._as_of = date.fromisoformat(key) if key else None
        except ValueError:
            self._as_of = None  # not a session key (another partitions definition)

    def load(self) -> Policies:
        if self._policies is None:
            self._policies = Policies(self.directory, self.universe_file, as_of=self._as_of)
        return self._policies
