"""Walk-forward replay (§L1, issue 12): determinism, isolation, its own audit chain, and the
same code path as the Dagster partition run (byte for byte)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from ais_pipelines.control import verify_audit
from ais_pipelines.ledger.store import LedgerStore
from ais_pipelines.replay import (
    DIGEST_TABLES,
    ReplayConfig,
    ReplayError,
    ReplayResult,
    replay_digest,
    run_replay,
)

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
D1, D2 = date(2026, 11, 18), date(2026, 11, 19)


def table(db: Path, name: str, as_of: date | None = None) -> pd.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        where = f" WHERE as_of = DATE '{as_of}'" if as_of else ""
        return con.execute(f'SELECT * FROM "{name}"{where}').df()
    finally:
        con.close()


def canonical(frame: pd.DataFrame, keys: list[str]) -> str:
    f = frame.drop(columns=["as_of"], errors="ignore")
    f = f.sort_values([k for k in keys if k in f.columns]).reset_index(drop=True)
    return f.reindex(columns=sorted(f.columns)).to_csv(index=False, float_format="%.17g")


@pytest.mark.slow
def test_replay_is_deterministic_isolated_and_audited(policies_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    live = tmp_path / "live_runtime"
    live.mkdir()
    monkeypatch.setenv("AIS_RUNTIME_DIR", str(live))
    from typer.testing import CliRunner

    from ais_pipelines.cli import app

    # Run a through the CLI (progress, digest, tear sheet), run b through the driver directly.
    cli = CliRunner().invoke(app, ["replay", "--start", str(D1), "--end", str(D2), "--out", str(tmp_path / "a"),
                                   "--policies", str(policies_dir)])
    assert cli.exit_code == 0, cli.output
    assert "[2/2] 2026-11-19" in cli.output and "ETA" in cli.output
    # run b checks each read the replay store answers from a held partition against the written table
    monkeypatch.setenv("AIS_REPLAY_STORE_VERIFY", "1")
    b = run_replay(ReplayConfig(D1, D2, tmp_path / "b", policies_dir=policies_dir))
    monkeypatch.delenv("AIS_REPLAY_STORE_VERIFY")
    assert f"Digest:      {b.digest}" in cli.output and len(b.digest) == 64
    sheet = (tmp_path / "a" / "tear_sheet.html").read_text()
    assert "data:image/png;base64," in sheet and "http://" not in sheet and "https://" not in sheet
    assert "<script" not in sheet and "Sharpe ratio" in sheet
    a = ReplayResult(tmp_path / "a", b.sessions, b.digest, 0.0, b.track_record)  # the CLI's, same digest
    assert [s for s in a.sessions] == [D1, D2]
    # Same decisions, orders, fills and NAV, table by table (what the digest covers).
    for name, keys in DIGEST_TABLES.items():
        assert canonical(table(a.warehouse, name), keys) == canonical(table(b.warehouse, name), keys), name
    track = a.track_record
    assert len(track) == 2 and track["orders"].sum() > 0 and track["fills"].sum() > 0
    # The book is carried: session 2's auction starts from what session 1 left at D+1's close.
    pos = table(a.warehouse, "positions_snapshot", D1)
    alloc2 = table(a.warehouse, "auction_symbols", D2).set_index("symbol")
    held = pos.set_index("symbol")["qty"]
    assert set(held.index) <= set(alloc2.index)
    assert (alloc2.loc[held.index, "current_weight"] > 0).all()
    # NAV at D+1's close = cash + Σ qty × close of D+1 (marks are the next session's closes).
    bars = table(a.warehouse, "bars")
    closes = bars[bars["date"] == pd.Timestamp("2026-11-19")].set_index("symbol")["close"]
    pnl = table(a.warehouse, "pnl_history", D1).iloc[0]
    assert pnl["nav"] == pytest.approx(pnl["cash"] + float((held * closes.reindex(held.index)).sum()), rel=1e-12)
    # Isolated: nothing written to the live runtime; own ledger whose audit chain verifies.
    assert list(live.iterdir()) == []
    store = LedgerStore.open(f"sqlite:///{a.ledger}")
    result = verify_audit(store)
    assert result.ok and result.n_records > 10
    store.dispose()
    # The digest printed is the digest stored, and recomputable from the warehouse.
    con = duckdb.connect(str(a.warehouse), read_only=True)
    try:
        assert replay_digest(con) == a.digest
    finally:
        con.close()
    assert a.digest in (a.out / "replay_digest.json").read_text()
    # The dbt marts over the replay's own warehouse (schema replay) agree with its tables.
    assert "dbt marts:   schema replay of the warehouse: PASS=" in cli.output and "ERROR=0" in cli.output
    con = duckdb.connect(str(a.warehouse), read_only=True)
    try:
        perf = con.execute("SELECT session_as_of, nav, drawdown, regime FROM replay.replay_performance").df()
        sess = con.execute("SELECT session_as_of, nav, drawdown, regime, approved, review, rejected, approve_rate, "
                           "filled_notional, orders FROM replay_sessions ORDER BY session_as_of").df()
        gates = con.execute("SELECT * FROM replay.replay_gate_pass_rates ORDER BY as_of").df()
        n_orders = con.execute("SELECT count(*) FROM replay.replay_orders").fetchone()[0]
        notional = con.execute("SELECT sum(notional) FROM replay.replay_fills").fetchone()[0]
    finally:
        con.close()
    pd.testing.assert_frame_equal(perf, sess[list(perf.columns)], check_dtype=False)
    assert list(gates["approved"]) == list(sess["approved"]) and list(gates["review"]) == list(sess["review"])
    assert list(gates["rejected"]) == list(sess["rejected"])
    np.testing.assert_allclose(gates["approve_rate"], sess["approve_rate"], rtol=1e-12)
    assert n_orders == int(sess["orders"].sum())
    assert notional == pytest.approx(float(sess["filled_notional"].sum()), rel=1e-12)
    with pytest.raises(ReplayError, match="already holds a replay"):
        run_replay(ReplayConfig(D1, D2, tmp_path / "a", policies_dir=policies_dir))


@pytest.mark.slow
def test_replayed_session_equals_the_dagster_partition_run(policies_dir: Path, runtime_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from ais_pipelines.definitions import build_definitions

    monkeypatch.setenv("AIS_POLICIES_DIR", str(policies_dir))
    monkeypatch.delenv("AIS_DATA_PROVIDER", raising=False)
    defs, inst = build_definitions(env="ci", runtime_root=str(runtime_root)), dg.DagsterInstance.ephemeral()
    for job in ("model_refit_job", "nightly_job"):
        r = defs.resolve_job_def(job).execute_in_process(partition_key=str(D1), instance=inst, run_config=QUIET,
                                                         raise_on_error=False)
        assert r.success
    # The replay through its Dagster job (run config; outputs are assets) — the same driver as the CLI.
    out = tmp_path / "replay"
    r = defs.resolve_job_def("replay_job").execute_in_process(
        instance=inst, raise_on_error=False,
        run_config={**QUIET, "ops": {"replay_tear_sheet": {"config": {"start": str(D1), "end": str(D1),
                                                                         "out": str(out), "dbt_marts": False}}}})
    assert r.success
    mats = [e.event_specific_data.materialization for e in r.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    session = [m for m in mats if m.asset_key.to_user_string() == "replay_session"]
    assert [m.partition for m in session] == [str(D1)]
    assert session[0].metadata["nav"].value > 0 and "predicted_cvar" in session[0].metadata
    sheet = [m for m in mats if m.asset_key.to_user_string() == "replay_tear_sheet"][0]
    assert len(sheet.metadata["digest"].value) == 64 and (out / "tear_sheet.html").exists()
    dag = runtime_root / "warehouse.duckdb"
    for name, keys in (("capital_allocations", ["candidate_id"]), ("auction_symbols", ["symbol"]),
                       ("order_proposals", ["symbol", "side"]), ("strategy_candidates", ["candidate_id"]),
                       ("portfolio_cvar", ["var"]), ("regime_probabilities", ["regime"])):
        mine, theirs = table(out / "warehouse.duckdb", name, D1), table(dag, name, D1)
        assert len(mine) > 0, name
        assert canonical(mine, keys) == canonical(theirs, keys), name


@pytest.mark.slow
def test_crisis_onset_de_risks_and_trades_reduce_only(policies_dir: Path, tmp_path: Path) -> None:
    """The sample market's scripted crisis (from 2024-11-22): with enough history behind it
    (n_sessions raised), p_crisis_5d above the threshold scales exposure by the declared linear
    rule, CRISIS sessions send only reduce-only sells, and predicted CVaR stays within its limit."""
    import yaml

    prov = yaml.safe_load((policies_dir / "providers.yaml").read_text())
    prov["sample"]["n_sessions"] = 1860  # ≥ 1260 valid sessions before the crisis
    (policies_dir / "providers.yaml").write_text(yaml.safe_dump(prov, sort_keys=False))
    # Point in time (issue 13): the shipped strategies start in 2026; for a 2024 replay they must
    # have been declared before it, or nothing is nominated (the time-travel fix).
    strategies = yaml.safe_load((policies_dir / "strategies.yaml").read_text())
    for spec in strategies["strategies"]:
        spec["inception"] = "2020-01-02"
    (policies_dir / "strategies.yaml").write_text(yaml.safe_dump(strategies, sort_keys=False))
    models = yaml.safe_load((policies_dir / "models.yaml").read_text())["regime"]
    thr, floor = float(models["crisis_threshold"]), float(models["min_exposure_scale"])
    res = run_replay(ReplayConfig(date(2024, 11, 15), date(2024, 11, 19), tmp_path / "crisis",
                                  policies_dir=policies_dir))
    t = res.track_record.set_index("as_of")
    assert list(t["regime"]) == ["VOLATILE", "CRISIS", "CRISIS"]
    p = t["p_crisis_5d"].astype(float)
    assert (p > thr).all()
    # §C4: exposure reduced pre-emptively above the threshold, linearly to the floor at p = 1.
    expected = 1.0 - (p - thr) / (1.0 - thr) * (1.0 - floor)
    np.testing.assert_allclose(t["exposure_scale"].astype(float), expected.clip(floor, 1.0), rtol=1e-9)
    assert t["invested_weight"].iloc[1] < t["invested_weight"].iloc[0]
    # §G4 at decision time: predicted CVaR never above the limit.
    assert (t["predicted_cvar"] <= t["cvar_limit"] + 1e-12).all()
    # §C4 / §H2: in CRISIS no risk-increasing order; the reduce-only sells still execute.
    orders = table(res.warehouse, "execution_orders")
    regime = table(res.warehouse, "regime_probabilities")[["as_of", "reduce_only"]]
    crisis = orders.merge(regime, on="as_of")
    crisis = crisis[crisis["reduce_only"].astype(bool)]
    assert len(crisis) >= 1 and set(crisis["side"]) == {"SELL"} and set(crisis["state"]) == {"FILLED"}


@pytest.mark.slow
def test_daily_loss_kill_switch_trips_stays_latched_and_resumes_by_the_scripted_rule(
        policies_dir: Path, tmp_path: Path) -> None:
    """§J2 in a replay over the sample crisis episode: a proposed policy directory declares a
    tighter daily-loss limit (0.3 bp of NAV, validated like any risk.yaml). The session whose
    loss reaches it trips the kill switch; HALTED holds (no order at all reaches the broker,
    not even the queued reduce-only sell: HALTED refuses everything, REDUCING allows reducing)
    until the declared rule resumes at the start of the 2nd session after, to REDUCING, recorded
    as scripted in the replay's own audit chain."""
    import yaml

    from ais_pipelines.ledger.store import SqlAuditStore

    def edit(name: str, change) -> None:  # noqa: ANN001 - a small YAML edit
        doc = yaml.safe_load((policies_dir / name).read_text())
        change(doc)
        (policies_dir / name).write_text(yaml.safe_dump(doc, sort_keys=False))

    limit = 0.00003
    edit("providers.yaml", lambda d: d["sample"].update(n_sessions=1860))  # history behind the 2024 crisis
    edit("strategies.yaml", lambda d: [s.update(inception="2020-01-02") for s in d["strategies"]])
    edit("risk.yaml", lambda d: d.update(daily_loss_limit=limit))
    edit("replay.yaml", lambda d: d["kill_switch"].update(resume_after_sessions=2, resume_to="REDUCING"))
    res = run_replay(ReplayConfig(date(2024, 11, 14), date(2024, 11, 25), tmp_path / "ks", policies_dir=policies_dir))
    t = res.track_record.reset_index(drop=True)
    open_nav = np.concatenate([[1_000_000.0], t["nav"].to_numpy()[:-1]])
    # daily loss = −(NAV change over the traded session) / opening NAV, when negative
    np.testing.assert_allclose(t["daily_loss"], np.maximum(0.0, -t["pnl_day"] / open_nav), rtol=1e-9, atol=1e-12)
    trip = int(np.flatnonzero(t["daily_loss"].to_numpy() >= limit)[0])
    assert trip == 4 and str(t["as_of"][trip]) == "2024-11-20" and t["daily_loss"][trip] > limit
    assert list(t["trading_mode"]) == ["ACTIVE"] * trip + ["HALTED"] * 3 + ["REDUCING"]
    assert list(t["kill_switch"]) == [False] * trip + [True] * 3 + [False]
    # Latched: sessions 5 and 6 lose nothing (daily loss 0) and stay HALTED, sending no order.
    assert (t["daily_loss"][trip + 1:trip + 3] < limit).all()
    orders = table(res.warehouse, "execution_orders")
    halted_days = {pd.Timestamp(d) for d in t["as_of"][trip + 1:trip + 3]}
    assert not set(pd.to_datetime(orders["as_of"])) & halted_days
    store = LedgerStore.open(f"sqlite:///{res.ledger}")
    try:
        queued = store.get_review("review:2024-11-22:AAPL:SELL")
        assert queued is not None and queued.status == "PENDING"  # the scripted approval was refused
        records = list(SqlAuditStore(store.engine).iter_records())
        status = store.current_trading_status()
    finally:
        store.dispose()
    kill = [r for r in records if r.event_type == "trading.kill_switch"]
    assert len(kill) == 1 and kill[0].payload["to"] == "HALTED" and "KILL_SWITCH_DAILY_LOSS" in kill[0].reason_codes
    assert kill[0].ts.startswith("2024-11-21T21:00")  # at the close of the session traded for 2024-11-20
    # The resume: scripted, with its rule, at the open of the 2nd session after the trip, then the
    # same control call a person makes, by the declared actor.
    scripted = [r for r in records if r.event_type == "replay.scripted.resume"]
    resume = [r for r in records if r.event_type == "trading.resume"]
    assert len(scripted) == 1 and scripted[0].payload["scripted"] is True
    assert scripted[0].payload["rule"].endswith("resume_after_sessions=2") and scripted[0].ts.startswith("2024-11-26")
    assert len(resume) == 1 and resume[0].actor == "risk.officer" and resume[0].seq == scripted[0].seq + 1
    assert resume[0].payload["from"] == "HALTED" and resume[0].payload["to"] == "REDUCING"
    assert status.mode.value == "REDUCING" and res.scripted_actions >= 1
    # After the resume only reducing orders execute: the sell of a held position.
    after = orders[pd.to_datetime(orders["as_of"]) == pd.Timestamp("2024-11-25")]
    assert list(after["side"]) == ["SELL"] and list(after["state"]) == ["FILLED"]
    held = table(res.warehouse, "positions_snapshot", date(2024, 11, 22)).set_index("symbol")["qty"]
    assert float(after["qty"].iloc[0]) <= float(held[after["symbol"].iloc[0]])
