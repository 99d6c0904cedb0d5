"""The nightly intelligence layer over consecutive as-of partitions, and point in time."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from ais_pipelines.definitions import build_definitions

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
FIT_DATE = "2026-10-06"  # 45 days before the last partition: past the 30-day full-weight age
SESSIONS = ["2026-11-18", "2026-11-19", "2026-11-20"]


@pytest.fixture()
def env(policies_dir: Path, runtime_root: Path, monkeypatch):
    monkeypatch.setenv("AIS_POLICIES_DIR", str(policies_dir))
    monkeypatch.delenv("AIS_UNIVERSE_FILE", raising=False)
    monkeypatch.delenv("AIS_DATA_PROVIDER", raising=False)
    defs = build_definitions(env="ci", runtime_root=str(runtime_root))
    return defs, dg.DagsterInstance.ephemeral(), runtime_root / "warehouse.duckdb"


def run(defs, instance, job: str, partition: str) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def(job).execute_in_process(
        partition_key=partition, instance=instance, run_config=QUIET, raise_on_error=False
    )
    assert result.success, [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return result


def query(db: Path, sql: str, params=()) -> pd.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).df()
    finally:
        con.close()


def test_three_partitions_show_model_age_and_decay_evolving(env):
    defs, instance, db = env
    run(defs, instance, "model_refit_job", FIT_DATE)
    for pk in SESSIONS:
        run(defs, instance, "nightly_job", pk)

    decay = query(db, "SELECT as_of, model, avg(age_days) age, avg(age_factor) af, avg(decay_factor) df "
                      "FROM model_decay_metrics GROUP BY 1, 2 ORDER BY 2, 1")
    mom = decay[decay["model"] == "momentum"].reset_index(drop=True)
    # Age counts calendar days from the fit date; the age factor is 1 until 30 days, then linear to 0 at 120.
    assert mom["age"].tolist() == [43.0, 44.0, 45.0]
    assert mom["af"].tolist() == pytest.approx([1 - 13 / 90, 1 - 14 / 90, 1 - 15 / 90])
    assert (mom["df"].diff().dropna() < 0).all()

    fc = query(db, "SELECT as_of, symbol, model_age_days, decay_factor, confidence FROM forecasts ORDER BY symbol, as_of")
    assert set(fc["model_age_days"]) == {43, 44, 45}
    assert (fc["decay_factor"] <= 1 - 13 / 90 + 1e-12).all()

    # Regime: one row per partition with a proper probability vector and p_crisis_5d from the matrix.
    reg = query(db, "SELECT * FROM regime_probabilities WHERE as_of > ? ORDER BY as_of", [pd.Timestamp(FIT_DATE).date()])
    assert len(reg) == 3
    beliefs = reg[["belief_normal", "belief_volatile", "belief_crisis"]].sum(axis=1)
    assert beliefs.to_numpy() == pytest.approx([1.0, 1.0, 1.0])
    assert ((reg["p_crisis_5d"] >= reg["belief_crisis"]) & (reg["p_crisis_5d"] <= 1)).all()

    # Lifecycle: new strategies stay INCUBATING at a 2 % cap (no paper history yet).
    lc = query(db, "SELECT * FROM strategy_lifecycle WHERE as_of = ?", [pd.Timestamp(SESSIONS[-1]).date()])
    assert set(lc["stage"]) == {"INCUBATING"} and lc["effective_cap"].tolist() == pytest.approx([0.02] * len(lc))
    assert set(lc["reason_codes"]) == {"EVALUATION_PERIOD"}

    # Candidates carry the data-gate status: PLD (INVALID_DATA) and USO (INSUFFICIENT_HISTORY) are
    # nominated only with their status, never as VALID.
    cands = query(db, "SELECT * FROM strategy_candidates WHERE as_of = ?", [pd.Timestamp(SESSIONS[-1]).date()])
    assert len(cands) > 0
    assert (cands["mu_adj"] > 0).all()
    bad = cands[cands["symbol"].isin(["PLD", "USO"])]
    assert set(bad["status"]) <= {"INVALID_DATA", "INSUFFICIENT_HISTORY"}


def test_partition_reads_nothing_after_its_session(env):
    defs, instance, db = env
    d = "2026-11-13"
    run(defs, instance, "model_refit_job", "2026-10-30")
    run(defs, instance, "nightly_job", "2026-11-20")  # bars through 11-20 are now stored
    run(defs, instance, "nightly_job", d)
    tables = ["market_features", "forecasts", "regime_probabilities", "data_quality"]
    before = {t: query(db, f"SELECT * FROM {t} WHERE as_of = ? ORDER BY ALL", [pd.Timestamp(d).date()]) for t in tables}

    # Rewrite history after D: every bar after D doubles.
    con = duckdb.connect(str(db))
    con.execute("UPDATE bars SET open = open * 2, high = high * 2, low = low * 2, close = close * 2, "
                "adj_close = adj_close * 2 WHERE date > ?", [pd.Timestamp(d).to_pydatetime()])
    con.close()
    job = defs.resolve_implicit_global_asset_job_def()
    sel = dg.AssetSelection.assets("data_quality", "market_features", "regime_probabilities", "forecasts")
    result = job.get_subset(asset_selection=set(sel.resolve(defs.resolve_asset_graph()))).execute_in_process(
        partition_key=d, instance=instance, run_config=QUIET, raise_on_error=False
    )
    assert result.success
    for t in tables:
        after = query(db, f"SELECT * FROM {t} WHERE as_of = ? ORDER BY ALL", [pd.Timestamp(d).date()])
        pd.testing.assert_frame_equal(before[t], after, check_like=True, obj=t)
