"""The macro_series asset against a loopback FRED stub (entitled) and without a key (never called)."""

from __future__ import annotations

import gzip
import json
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines.nightly import macro_inputs_as_of
from assets.macro import macro_series
from resources.market_data import MarketDataResource
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource
from tests.stubs.fred_stub import OBSERVATIONS, FredStub
from tests.stubs.http_stub import loopback_guard  # noqa: F401  (autouse: loopback only)

D = "2026-11-20"
DAYS = [date(2026, 11, 1) + timedelta(days=i) for i in range(20)]


def materialize(policies_dir: Path, root: Path, fred_url: str) -> dg.ExecuteInProcessResult:
    return dg.materialize([macro_series], partition_key=D, instance=dg.DagsterInstance.ephemeral(), resources={
        "policies": PoliciesResource(directory=str(policies_dir)), "runtime": RuntimeResource(root=str(root)),
        "warehouse": DuckDBResource(database=str(root / "warehouse.duckdb")),
        "market_data": MarketDataResource(fred_base_url=fred_url)})


def read(root: Path, table: str) -> pd.DataFrame:
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(f"SELECT * FROM {table}").df()
    finally:
        con.close()


def regime_inputs(policies_dir: Path, root: Path) -> dict:
    from ais_pipelines.config import Policies

    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        return macro_inputs_as_of(con, Policies(policies_dir), pd.Timestamp(D), vix_proxy=11.0)
    finally:
        con.close()


def test_fred_feeds_the_regime_point_in_time(policies_dir: Path, runtime_root: Path, monkeypatch) -> None:
    with FredStub(publication_lag_days=1) as fred:
        monkeypatch.setenv("FRED_API_KEY", fred.api_key)
        fred.add("VIXCLS", [(d, f"{15 + i / 10:.2f}") for i, d in enumerate(DAYS)])
        fred.add("T10Y2Y", [(d, "0.52") for d in DAYS[:15]] + [(d, ".") for d in DAYS[15:]])
        fred.add("BAMLH0A0HYM2", [(d, "3.10") for d in DAYS])
        assert materialize(policies_dir, runtime_root, fred.base_url).success
        reqs = fred.server.requests_for(OBSERVATIONS)
        assert {r.param("realtime_end") for r in reqs} == {D}  # the vintage known on D
    log = read(runtime_root, "macro_fetch_log").set_index("series_id")
    assert log["status"].tolist() == ["OK", "OK", "OK"]
    with gzip.open(log.loc["VIXCLS", "raw_path"], "rt") as fh:
        raw = fh.read()
    assert fred.api_key not in raw and json.loads(raw)["provider"] == "fred"

    out = regime_inputs(policies_dir, runtime_root)
    # D's own close is published on D + 1: the newest value known on D is the 19th's (index 18)
    assert out["vix_source"] == "fred:VIXCLS" and out["vix_obs_date"] == "2026-11-19" and out["vix_level"] == 16.8
    assert out["macro_t10y2y"] == 0.52 and out["macro_t10y2y_date"] == "2026-11-15"  # "." holidays skipped
    assert out["macro_bamlh0a0hym2"] == 3.10 and out["macro_reason_codes"] == []


def test_without_a_key_fred_is_never_called_and_the_proxy_is_used(policies_dir: Path, runtime_root: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.delenv("FRED_API_KEY", raising=False)
    with FredStub() as fred:
        assert materialize(policies_dir, runtime_root, fred.base_url).success
        assert fred.server.requests == []
    log = read(runtime_root, "macro_fetch_log")
    assert set(log["reason_code"]) == {"PROVIDER_NOT_ENTITLED"}
    out = regime_inputs(policies_dir, runtime_root)
    assert out["vix_level"] == 11.0 and out["vix_source"] == "proxy"
    assert out["macro_reason_codes"] == ["VIX_PROXY_FALLBACK", "PROVIDER_NOT_ENTITLED", "MACRO_SERIES_MISSING"]


def test_a_rejected_key_is_recorded_and_falls_back(policies_dir: Path, runtime_root: Path, monkeypatch) -> None:
    with FredStub() as fred:
        monkeypatch.setenv("FRED_API_KEY", "not-the-key")
        fred.add("VIXCLS", [(d, "15") for d in DAYS])
        assert materialize(policies_dir, runtime_root, fred.base_url).success
        assert len(fred.server.requests) == 3  # one per series, none retried
    assert set(read(runtime_root, "macro_fetch_log")["reason_code"]) == {"PROVIDER_REJECTED"}
    assert regime_inputs(policies_dir, runtime_root)["macro_reason_codes"][:2] == ["VIX_PROXY_FALLBACK",
                                                                                    "PROVIDER_REJECTED"]
