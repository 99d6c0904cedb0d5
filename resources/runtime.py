"""Where run artefacts live: raw archive, reports, ledger (git-ignored ``runtime/``)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class RuntimeResource(dg.ConfigurableResource):
    root: str = "runtime"

    def path(self, *parts: str) -> Path:
        p = Path(self.root).joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def raw_archive_dir(self, run_id: str) -> Path:
        d = Path(self.root) / "raw" / run_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def reports_dir(self) -> Path:
        d = Path(self.root) / "reports"
        d.mkdir(parents=True, exist_ok=True)
        return d
