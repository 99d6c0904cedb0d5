"""Policies are data validated on load; errors name the file, the key and the bad value."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ais_pipelines.config import DEFAULT_POLICIES_DIR, Policies, PolicyFileError
from ais_pipelines.core.asset_classes import AssetClass


@pytest.fixture()
def policies_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, d)
    return d


def _edit(path: Path, fn) -> None:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))


def test_shipped_policies_are_valid():
    p = Policies()
    assert p.validate_all()[:6] == ["universe", "providers", "quality", "schedules", "models", "strategies"]
    assert p.quality.history.min_valid_sessions == 1260
    assert p.quality.score.invalid_below == 0.6
    assert p.universe.asset_classes["BTC/USD"] == AssetClass.CRYPTO
    assert p.universe.calendars["BTC/USD"] == "24/7"
    assert p.universe.calendars["EUR/USD"] == "24/5"
    assert p.universe.calendars["AAPL"] == "XNYS"


def test_bad_asset_class_names_file_key_and_value(policies_dir: Path):
    def bad(d):
        d["symbols"][3]["asset_class"] = "STONKS"

    _edit(policies_dir / "universe.yaml", bad)
    with pytest.raises(PolicyFileError) as err:
        _ = Policies(policies_dir).universe
    msg = str(err.value)
    assert "universe.yaml" in msg and "symbols[3].asset_class" in msg and "'STONKS'" in msg


def test_unknown_key_and_bad_weight_are_refused(policies_dir: Path):
    _edit(policies_dir / "quality.yaml", lambda d: d["score"]["weights"].__setitem__("stale_prices", -1))
    with pytest.raises(PolicyFileError, match=r"quality.yaml.*weights.*-1"):
        _ = Policies(policies_dir).quality
    _edit(policies_dir / "providers.yaml", lambda d: d["providers"]["yahoo"].__setitem__("max_histroy", 5))
    with pytest.raises(PolicyFileError, match=r"providers.yaml.*providers.yahoo.max_histroy"):
        _ = Policies(policies_dir).providers


def test_routing_to_unknown_provider_is_refused(policies_dir: Path):
    _edit(policies_dir / "providers.yaml", lambda d: d["routing"]["history"].append("bloomberg"))
    with pytest.raises(PolicyFileError, match=r"routing.history\[5\]: unknown provider 'bloomberg'"):
        _ = Policies(policies_dir).providers


def test_duplicate_symbol_and_unreadable_files(policies_dir: Path):
    _edit(policies_dir / "universe.yaml", lambda d: d["symbols"].append({"symbol": "aapl"}))
    with pytest.raises(PolicyFileError, match="duplicate symbol 'AAPL'"):
        _ = Policies(policies_dir).universe
    (policies_dir / "schedules.yaml").write_text("nightly: [unclosed")
    with pytest.raises(PolicyFileError, match="schedules.yaml: not valid YAML"):
        _ = Policies(policies_dir).schedules
    (policies_dir / "quality.yaml").unlink()
    with pytest.raises(PolicyFileError, match="quality.yaml: cannot read"):
        _ = Policies(policies_dir).quality


def test_fallback_classifier_when_class_is_not_declared(policies_dir: Path):
    _edit(policies_dir / "universe.yaml", lambda d: d["symbols"].append({"symbol": "SOL-USD"}))
    assert Policies(policies_dir).universe.asset_classes["SOL-USD"] == AssetClass.CRYPTO
