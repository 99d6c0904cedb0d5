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


# The longest files first: with two xdist workers (``make test`` hands files out in collection
# order, --no-loadscope-reorder) the suite ends when its longest file does, so the demo and the
# daemon run must not be the last ones handed out (by default xdist hands out big files first).
LONGEST_FIRST = ("tests/e2e/test_demo_output.py", "tests/integration/test_daemon_e2e.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its order
