"""Shared fixtures: every test writes into tmp_path, never into the working tree."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from ais_pipelines.config import DEFAULT_POLICIES_DIR

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")

# A small universe that still exercises every class, calendar and gate.
SMALL_UNIVERSE = {
    "name": "test-small",
    "benchmark": "equal_weight_stocks",
    "symbols": [
        {"symbol": "AAPL", "asset_class": "STOCKS", "sector": "Information Technology"},
        {"symbol": "MSFT", "asset_class": "STOCKS", "sector": "Information Technology"},
        {"symbol": "JPM", "asset_class": "STOCKS", "sector": "Financials"},
        {"symbol": "XOM", "asset_class": "STOCKS", "sector": "Energy"},
        {"symbol": "PLD", "asset_class": "STOCKS", "sector": "Real Estate"},
        {"symbol": "USO", "asset_class": "COMMODITIES", "sector": "Energy Commodities"},
        {"symbol": "EUR/USD", "asset_class": "FX", "sector": "Currencies"},
        {"symbol": "BTC/USD", "asset_class": "CRYPTO", "sector": "Digital Assets"},
    ],
}


@pytest.fixture()
def policies_dir(tmp_path: Path) -> Path:
    """A copy of the shipped policies with the small universe."""
    d = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, d)
    (d / "universe.yaml").write_text(yaml.safe_dump(SMALL_UNIVERSE, sort_keys=False))
    return d


@pytest.fixture()
def runtime_root(tmp_path: Path) -> Path:
    d = tmp_path / "runtime"
    d.mkdir()
    return d
