"""Issue 17: a mostly broken feed is a system fault; every skip names the gate; one market clock.

Measured on the main before the fix: with ``min_tradable_symbols: 1`` a universe where 25 of 26
symbols went INVALID_DATA only warned and the last valid symbol traded; a failed quality gate
made the sensor say ``NO_PROPOSALS: never materialized``; a fixed Saturday clock was refused by
the sensor but ``ais execute`` traded (it always used a simulated, open clock).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import typer
from dagster_duckdb import DuckDBResource
from typer.testing import CliRunner

from ais_pipelines import cli_ops
from ais_pipelines.config import Policies
from ais_pipelines.core.data_health import HealthLimits, assess_data_health
from ais_pipelines.core.trading_state import TradingMode
from ais_pipelines.ledger.store import LedgerStore, SqlAuditStore
from assets import execution as exec_assets
from assets.ingestion import daily_bars, daily_bars_schema, raw_bars_schema, raw_daily_bars
from assets.quality import data_health_gate, data_quality, data_quality_schema, history_gate, quality_gate
from resources.clock import ClockResource
from resources.market_data import MarketDataResource
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource
from resources.trading import ExecutionClockResource, LedgerResource, trading_resources_for
from sensors.execution import execution_gate, execution_sensor
from tests.integration.test_execution import write_nightly
from tests.integration.test_execution_sensor import stand_ins
from tests.integration.test_files_provider import END, good_frame, write_csv

LIMITS = HealthLimits(min_tradable_share=0.5, max_mean_quality_drop=0.1, max_provider_failure_rate=0.1,
                      max_stale_share=0.25, stale_after_sessions=3)
D = date(2026, 11, 20)


def quality(n: int, tradable: int, score: float = 0.95, last: str = "2026-11-20") -> pd.DataFrame:
    return pd.DataFrame({"symbol": [f"S{i}" for i in range(n)], "calendar": "XNYS", "last_date": pd.Timestamp(last),
                         "tradable": [i < tradable for i in range(n)], "data_quality_score": score})


def log(n: int, failed: int) -> pd.DataFrame:
    return pd.DataFrame({"symbol": [f"S{i}" for i in range(n)], "status": ["FAILED"] * failed + ["OK"] * (n - failed)})


# --------------------------------------------------------------------------------------------
# the pure assessment


def test_a_healthy_night_breaches_nothing() -> None:
    r = assess_data_health(quality(26, 25), log(26, 1), [0.95, 0.96], LIMITS, D)
    assert r.ok and r.reason_code is None
    assert r.metrics["tradable_share"] == pytest.approx(25 / 26) and r.metrics["provider_failure_rate"] == 1 / 26


def test_a_mostly_invalid_universe_is_a_breach() -> None:
    r = assess_data_health(quality(26, 1), log(26, 0), [], LIMITS, D)
    assert not r.ok and list(r.breaches["metric"]) == ["tradable_share"]
    assert str(r.reason_code) == "DATA_HEALTH_BREACH" and "1 of 26 tradable" in r.breaches["detail"].iloc[0]


def test_a_provider_failing_for_most_symbols_is_a_breach() -> None:
    r = assess_data_health(quality(20, 20), log(20, 3), [], LIMITS, D)
    assert list(r.breaches["metric"]) == ["provider_failure_rate"] and r.metrics["provider_failure_rate"] == 0.15
    assert r.failed_symbols == ("S0", "S1", "S2")


def test_mean_quality_drop_and_stale_last_bars() -> None:
    drop = assess_data_health(quality(10, 10, score=0.80), log(10, 0), [0.95, 0.94, 0.96], LIMITS, D)
    assert list(drop.breaches["metric"]) == ["mean_quality_drop"]
    assert drop.metrics["mean_quality_drop"] == pytest.approx(0.15)
    # Last bar Fri 2026-11-13: 5 XNYS sessions behind Fri 2026-11-20 (> 3).
    stale = assess_data_health(quality(4, 4, last="2026-11-13"), log(4, 0), [], LIMITS, D)
    assert list(stale.breaches["metric"]) == ["stale_share"] and len(stale.stale_symbols) == 4
    fresh = assess_data_health(quality(4, 4, last="2026-11-17"), log(4, 0), [], LIMITS, D)  # 3 behind: ok
    assert fresh.ok


def test_min_tradable_symbols_zero_is_refused(policies_dir: Path) -> None:
    p = policies_dir / "quality.yaml"
    p.write_text(p.read_text().replace("min_tradable_symbols: 1", "min_tradable_symbols: 0"))
    with pytest.raises(ValueError, match="min_tradable_symbols"):
        Policies(policies_dir).quality  # noqa: B018


# --------------------------------------------------------------------------------------------
# through the real nightly ingestion: 6 of 8 symbols missing at the provider


NIGHTLY = [raw_daily_bars, daily_bars, data_quality, raw_bars_schema, daily_bars_schema, quality_gate, history_gate,
           data_quality_schema, data_health_gate]


def nightly_resources(root: Path, policies_dir: Path, files: Path) -> dict[str, object]:
    """The nightly job's resources on the files provider, with the ledger the health gate writes to."""
    return {
        "policies": PoliciesResource(directory=str(policies_dir)),
        "runtime": RuntimeResource(root=str(root)),
        "warehouse": DuckDBResource(database=str(root / "warehouse.duckdb")),
        "clock": ClockResource(fixed_now="2026-11-21T12:00:00+00:00"),
        "market_data": MarketDataResource(provider="files", files_dir=str(files)),
        "ledger": LedgerResource(url=f"sqlite:///{root / 'ledger.sqlite'}", runtime_root=str(root)),
    }


@pytest.fixture()
def broken_night(tmp_path: Path, policies_dir: Path) -> tuple[dg.DagsterInstance, dict, Path]:
    files = tmp_path / "files"
    files.mkdir()
    write_csv(files, "AAPL.csv", good_frame("AAPL"))
    write_csv(files, "MSFT.csv", good_frame("MSFT"))
    root = tmp_path / "runtime"
    root.mkdir()
    resources = nightly_resources(root, policies_dir, files)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(NIGHTLY, partition_key=str(END.date()), resources=resources, instance=instance,
                            raise_on_error=False)
    return instance, {**resources, "result": result}, root


def test_a_broken_feed_is_a_system_fault_and_nothing_trades(broken_night, policies_dir: Path) -> None:
    instance, res, root = broken_night
    checks = {c.check_name: c for c in res["result"].get_asset_check_evaluations()}
    gate = checks["data_health_gate"]
    assert not gate.passed and gate.severity is dg.AssetCheckSeverity.ERROR
    assert gate.metadata["reason_code"].value == "DATA_HEALTH_BREACH"
    assert "provider_failure_rate 0.750 > limit 0.100" in gate.metadata["summary"].value
    assert "tradable_share 0.250 < limit 0.500" in gate.metadata["summary"].value
    store = LedgerStore.open(f"sqlite:///{root / 'ledger.sqlite'}")
    status = store.current_trading_status()
    assert status.mode is TradingMode.REDUCING and "DATA_HEALTH_BREACH" in map(str, status.reason_codes)
    records = [r for r in SqlAuditStore(store.engine).iter_records() if r.event_type == "data_health.breach"]
    assert len(records) == 1 and records[0].reason_codes == ("DATA_HEALTH_BREACH",)

    # The sensor and the CLI name the same gate, with its own reason — not "no proposals".
    sensor = execution_sensor(exec_assets.intraday_execution_job, Policies(policies_dir))
    ctx = dg.build_sensor_context(instance=instance, resources={
        "warehouse": res["warehouse"], "ledger": res["ledger"], "execution_clock": ExecutionClockResource()})
    skip = sensor(ctx)
    assert isinstance(skip, dg.SkipReason)
    assert skip.skip_message.startswith("UPSTREAM_CHECK_FAILED: data_quality:data_health_gate for partition "
                                        "2026-11-20 failed with ERROR [DATA_HEALTH_BREACH"), skip.skip_message
    gate_cli = execution_gate(instance, warehouse=res["warehouse"], ledger=store,
                              execution_clock=ExecutionClockResource())
    assert gate_cli.skip_reason() == skip.skip_message


def test_halted_when_the_policy_says_so(tmp_path: Path, policies_dir: Path) -> None:
    p = policies_dir / "quality.yaml"
    p.write_text(p.read_text().replace("on_breach: REDUCING", "on_breach: HALTED"))
    files = tmp_path / "files"
    files.mkdir()
    root = tmp_path / "runtime"
    root.mkdir()
    resources = nightly_resources(root, policies_dir, files)
    write_csv(files, "AAPL.csv", good_frame("AAPL"))
    dg.materialize(NIGHTLY, partition_key=str(END.date()), resources=resources, raise_on_error=False,
                   instance=dg.DagsterInstance.ephemeral())
    status = LedgerStore.open(f"sqlite:///{root / 'ledger.sqlite'}").current_trading_status()
    assert status.mode is TradingMode.HALTED and "DATA_HEALTH_BREACH" in map(str, status.reason_codes)


# --------------------------------------------------------------------------------------------
# one clock rule for the sensor, the jobs and the CLI


def test_a_fixed_closed_market_clock_is_refused_by_sensor_and_cli(tmp_path: Path, policies_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    saturday = "2024-03-09T15:00:00+00:00"
    monkeypatch.setenv("AIS_EXECUTION_NOW", saturday)
    monkeypatch.setenv("AIS_ENV", "ci")
    monkeypatch.setenv("AIS_APPROVAL_KEY", "5a" * 32)
    root = tmp_path / "runtime"
    root.mkdir()
    write_nightly(root / "warehouse.duckdb")
    home = tmp_path / "dagster_home"
    home.mkdir()
    for k, v in {"AIS_RUNTIME_DIR": root, "AIS_WAREHOUSE": root / "warehouse.duckdb",
                 "AIS_POLICIES_DIR": policies_dir, "DAGSTER_HOME": home}.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.delenv("AIS_LEDGER_URL", raising=False)
    clock = trading_resources_for("ci", str(root))["execution_clock"]
    assert (clock.mode, clock.fixed_now) == ("fixed", saturday)  # what the definitions factory gives the sensor
    with dg.DagsterInstance.get() as instance:
        dg.materialize(stand_ins({}), partition_key="2024-03-04", instance=instance)
        sensor = execution_sensor(exec_assets.intraday_execution_job, Policies(policies_dir))
        ctx = dg.build_sensor_context(instance=instance, resources={
            "warehouse": DuckDBResource(database=str(root / "warehouse.duckdb")),
            "ledger": LedgerResource(runtime_root=str(root)), "execution_clock": clock})
        skip = sensor(ctx)
    assert isinstance(skip, dg.SkipReason) and skip.skip_message.startswith("MARKET_CLOSED: XNYS is closed at "
                                                                            "2024-03-09T15:00:00+00:00")
    app = typer.Typer()
    cli_ops.register(app)
    res = CliRunner().invoke(app, ["execute", "--as-of", "2024-03-04"])
    assert res.exit_code == 1 and f"SKIP {skip.skip_message}" in res.output, res.output
    assert LedgerStore.open(f"sqlite:///{root / 'ledger.sqlite'}").list_orders() == []


def test_simulated_clock_is_refused_in_prod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIS_EXECUTION_CLOCK", "simulated")
    with pytest.raises(ValueError, match="simulated"):
        trading_resources_for("prod", str(tmp_path))
