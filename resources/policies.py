"""Policies as a resource: the directory (and universe file) are run configuration."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from ais_pipelines.config import Policies


class PoliciesResource(dg.ConfigurableResource):
    """Loads ``policies/*.yaml`` once per run; invalid files fail the step (fail closed)."""

    directory: str | None = None
    universe_file: str | None = None
    _policies: Policies | None = PrivateAttr(default=None)

    def load(self) -> Policies:
        if self._policies is None:
            self._policies = Policies(self.directory, self.universe_file)
        return self._policies
