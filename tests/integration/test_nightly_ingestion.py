"""Full in-process materialization of ingestion and quality on the embedded sample market."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource

import assets.ingestion as ingestion_assets
from ais_pipelines.ingestion import LOG_COLUMNS, IngestionOutcome
from assets.ingestion import daily_bars, daily_bars_schema, raw_bars_schema, raw_daily_bars
from assets.quality import data_quality, data_quality_schema, history_gate, quality_gate
from resources.clock import ClockResource
from resources.market_data import MarketDataResource
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource

ASSETS = [raw_daily_bars, daily_bars, data_quality]
CHECKS = [raw_bars_schema, daily_bars_schema, quality_gate, history_gate, data_quality_schema]


def make_resources(policies_dir: Path, runtime_root: Path, **market) -> dict[str, object]:
    return {
        "policies": PoliciesResource(directory=str(policies_dir)),
        "runtime": RuntimeResource(root=str(runtime_root)),
        "warehouse": DuckDBResource(database=str(runtime_root / "warehouse.duckdb")),
        "clock": ClockResource(fixed_now="2026-11-21T12:00:00+00:00"),
        "market_data": MarketDataResource(**({"provider": "sample"} | market)),
    }


AS_OF = "2026-11-20"


def run(policies_dir: Path, runtime_root: Path, **market) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*ASSETS, *CHECKS],
        partition_key=AS_OF,
        resources=make_resources(policies_dir, runtime_root, **market),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def checks_by_name(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_nightly_ingestion_and_quality_on_sample(policies_dir: Path, runtime_root: Path):
    result = run(policies_dir, runtime_root)
    assert result.success
    materialized = {e.event_specific_data.materialization.asset_key.to_user_string()
                    for e in result.get_asset_materialization_events()}
    assert materialized == {"raw_daily_bars", "daily_bars", "data_quality"}

    con = duckdb.connect(str(runtime_root / "warehouse.duckdb"), read_only=True)
    per_symbol = con.execute(
        "SELECT symbol, asset_class, count(*) n, max(date)::DATE last FROM bars GROUP BY 1, 2 ORDER BY 1").df()
    quality = con.execute("SELECT * FROM data_quality").df().set_index("symbol")
    con.close()

    # Every symbol stored with its asset class; nothing dated after the as-of session.
    assert set(per_symbol["symbol"]) == {"AAPL", "MSFT", "JPM", "XOM", "PLD", "USO", "EUR/USD", "BTC/USD"}
    classes = dict(zip(per_symbol["symbol"], per_symbol["asset_class"], strict=True))
    assert classes["BTC/USD"] == "CRYPTO" and classes["EUR/USD"] == "FX" and classes["USO"] == "COMMODITIES"
    assert (pd.to_datetime(per_symbol["last"]) <= pd.Timestamp("2026-11-20")).all()

    # The declared demo defects hit the gates: PLD misses 45 % of sessions, USO is 900 sessions old.
    assert quality.loc["PLD", "status"] == "INVALID_DATA"
    assert quality.loc["PLD", "data_quality_score"] < 0.6
    assert quality.loc["USO", "status"] == "INSUFFICIENT_HISTORY"
    assert quality.loc["USO", "valid_sessions"] < 1260
    for sym in ("AAPL", "MSFT", "JPM", "XOM", "EUR/USD", "BTC/USD"):
        assert quality.loc[sym, "status"] == "VALID", sym
        assert quality.loc[sym, "valid_sessions"] >= 1260
        assert bool(quality.loc[sym, "tradable"])
    assert not quality.loc[["PLD", "USO"], "tradable"].any()

    checks = checks_by_name(result)
    assert checks["raw_bars_schema"].passed and checks["daily_bars_schema"].passed
    assert checks["data_quality_schema"].passed
    # Symbol-level exclusions warn; they do not halt the system.
    assert not checks["quality_gate"].passed
    assert checks["quality_gate"].severity == dg.AssetCheckSeverity.WARN
    assert not checks["history_gate"].passed
    assert checks["history_gate"].severity == dg.AssetCheckSeverity.WARN

    # Raw responses archived as gzip JSON under runtime/raw/{run_id}/.
    archived = sorted((runtime_root / "raw" / result.run_id).rglob("*.json.gz"))
    assert len(archived) == 8
    with gzip.open(archived[0], "rt") as fh:
        body = json.load(fh)
    assert body["provider"] == "sample" and body["lineage"]["synthetic"] is True
    assert len(body["response"]) >= 1260


def test_schema_check_blocks_downstream(policies_dir: Path, runtime_root: Path, monkeypatch):
    good = run(policies_dir, runtime_root)
    assert good.success
    con = duckdb.connect(str(runtime_root / "warehouse.duckdb"), read_only=True)
    before = con.execute("SELECT count(*), sum(close) FROM bars").fetchone()
    con.close()

    # Simulate a normalization defect: a negative close reaches staging.
    bad_bars = pd.DataFrame({
        "symbol": ["AAPL"], "date": [pd.Timestamp("2026-11-20")], "open": [1.0], "high": [1.0], "low": [1.0],
        "close": [-5.0], "volume": [10.0], "adj_close": [-5.0], "asset_class": ["STOCKS"], "provider": ["sample"],
    })
    monkeypatch.setattr(ingestion_assets, "ingest_universe", lambda **_: IngestionOutcome(
        bars=bad_bars, rejects=pd.DataFrame(columns=["symbol", "date", "reason_code", "detail", "source", "provider"]),
        log=pd.DataFrame([{"symbol": "AAPL", "status": "OK", "provider": "sample", "reason_code": "", "detail": "",
                           "rows_received": 1, "rows_valid": 1, "rows_rejected": 0}]).reindex(columns=LOG_COLUMNS),
    ))
    result = run(policies_dir, runtime_root)
    checks = checks_by_name(result)
    assert not checks["raw_bars_schema"].passed
    assert checks["raw_bars_schema"].severity == dg.AssetCheckSeverity.ERROR
    materialized = {e.event_specific_data.materialization.asset_key.to_user_string()
                    for e in result.get_asset_materialization_events()}
    assert materialized == {"raw_daily_bars"}  # daily_bars and data_quality never ran
    con = duckdb.connect(str(runtime_root / "warehouse.duckdb"), read_only=True)
    after = con.execute("SELECT count(*), sum(close) FROM bars").fetchone()
    con.close()
    assert after == before


@pytest.mark.parametrize("provider", ["yahoo", "alpaca"])
def test_unentitled_provider_is_never_called(policies_dir: Path, runtime_root: Path, monkeypatch, provider):
    for var in ("AIS_YAHOO_ENABLED", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "AIS_DATA_PROVIDER"):
        monkeypatch.delenv(var, raising=False)
    # Pointing at a closed port: any call would fail loudly with a connection error.
    result = run(policies_dir, runtime_root, provider=provider,
                 yahoo_base_url="http://127.0.0.1:9", alpaca_data_url="http://127.0.0.1:9")
    con = duckdb.connect(str(runtime_root / "warehouse.duckdb"), read_only=True)
    log = con.execute("SELECT symbol, status, reason_code FROM ingestion_log").df()
    con.close()
    assert (log["status"] == "FAILED").all()
    assert set(log["reason_code"]) == {"PROVIDER_NOT_ENTITLED"}
    # Nothing delivered is a system-level fault: the run fails and nothing downstream runs.
    assert not result.success
    assert result.get_asset_materialization_events() == []
