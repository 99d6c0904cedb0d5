"""Issue 13: ``ais ingest`` on your own files (any exchange, any year) and ``ais quality show``.

Reproduces: data ending in 2013 or on another exchange's calendar could not be assessed at its
own last session (DagsterInvalidSubsetError / PROVIDER_EMPTY_RESPONSE), and there was no
command for a directory of files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import yaml
from typer.testing import CliRunner

from ais_pipelines.cli import app
from ais_pipelines.config import DEFAULT_POLICIES_DIR
from ais_pipelines.core.calendars import sessions_between


def _walk_csv(path: Path, sessions: pd.DatetimeIndex, seed: int, split_at: int | None = None) -> None:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, len(sessions))))
    volume = np.full(len(sessions), 1e5)
    if split_at is not None:  # an unadjusted 2:1 split, no adj_close column
        close[split_at:] /= 2
        volume[split_at:] *= 2
    pd.DataFrame({"date": sessions.strftime("%Y-%m-%d"), "open": close, "high": close * 1.01, "low": close * 0.99,
                  "close": close, "volume": volume}).to_csv(path, index=False)


def test_ingest_old_foreign_data_at_its_last_session_then_show_a_symbols_flags(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    sessions = sessions_between("XPHS", "2006-01-01", "2013-12-27")  # Philippine Stock Exchange, ends 2013
    _walk_csv(files / "ALI.csv", sessions, 1)
    _walk_csv(files / "BDO.csv", sessions, 2, split_at=len(sessions) - 300)
    env = {"AIS_RUNTIME_DIR": str(tmp_path / "rt")}
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "--dir", str(files), "--calendar", "XPHS", "--no-refit"], env=env)
    assert result.exit_code == 0, result.output
    assert f"Fit them as of 2013-12-27: ais ingest --dir {files} --as-of 2013-12-27" in " ".join(result.output.split())
    last = sessions[-1].date()
    assert f"assessing data quality as of {last}" in result.output
    n = len(sessions)
    assert f"rows read {2 * n:,} = stored {2 * n:,} + rejected 0" in result.output
    con = duckdb.connect(str(tmp_path / "rt" / "warehouse.duckdb"), read_only=True)
    try:
        q = con.execute("SELECT symbol, status, calendar, expected_sessions FROM data_quality ORDER BY 1").fetchall()
        split = con.execute("SELECT session FROM quality_flags WHERE flag = 'split_like_jumps'").fetchall()
    finally:
        con.close()
    assert q == [("ALI", "VALID", "XPHS", 1320), ("BDO", "INVALID_DATA", "XPHS", 1320)]
    assert split == [(sessions[n - 300].date(),)]

    shown = runner.invoke(app, ["quality", "show", "bdo"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "BDO as of 2013-12-27: INVALID_DATA" in shown.output
    assert f"{sessions[n - 300].date()} split_like_jumps UNADJUSTED_SPLIT" in shown.output

    bad = runner.invoke(app, ["ingest", "--dir", str(tmp_path / "nope")], env=env)
    assert bad.exit_code == 2 and "not a directory" in bad.output
    early = runner.invoke(app, ["ingest", "--dir", str(files), "--calendar", "XPHS", "--as-of", "2005-06-01"],
                          env=env)
    assert early.exit_code == 1 and "no symbol has a valid bar on or before 2005-06-01" in early.output


def _model_versions(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT fit_date, model, model_version FROM forecast_models ORDER BY 2").fetchall()
    finally:
        con.close()


def test_ingest_fits_missing_models_as_of_d_point_in_time(tmp_path: Path) -> None:
    """A missing model as of D is fitted by ``ais ingest --as-of D`` on history up to D only:
    the same versions (hash over the coefficients) as from files that end at D."""
    sessions = sessions_between("XLON", "2012-01-01", "2013-12-31")
    d = sessions[-100]
    policies = tmp_path / "policies"  # a short history (fast regime fit): the gate asks 300 sessions
    shutil.copytree(DEFAULT_POLICIES_DIR, policies)
    quality = yaml.safe_load((policies / "quality.yaml").read_text())
    quality["history"] = {"min_valid_sessions": 300, "fetch_sessions": 400}
    (policies / "quality.yaml").write_text(yaml.safe_dump(quality))
    models = yaml.safe_load((policies / "models.yaml").read_text())  # the regime HMM (seconds here) falls back:
    models.setdefault("regime", {})["min_obs"] = 10_000  # the refit path is under test, not the regime fit
    (policies / "models.yaml").write_text(yaml.safe_dump(models))
    full, cut = tmp_path / "full", tmp_path / "cut"
    for directory, upto in ((full, sessions), (cut, sessions[sessions <= d])):
        directory.mkdir()
        for i, sym in enumerate(("VOD", "BP")):
            _walk_csv(directory / f"{sym}.csv", sessions, i)
            frame = pd.read_csv(directory / f"{sym}.csv")
            frame[frame["date"] <= upto[-1].strftime("%Y-%m-%d")].to_csv(directory / f"{sym}.csv", index=False)
    runner = CliRunner()
    out = {}
    for name, directory in (("full", full), ("cut", cut)):
        env = {"AIS_RUNTIME_DIR": str(tmp_path / f"rt-{name}"), "AIS_POLICIES_DIR": str(policies)}
        result = runner.invoke(app, ["ingest", "--dir", str(directory), "--calendar", "XLON",
                                     "--as-of", str(d.date())], env=env)
        assert result.exit_code == 0, result.output
        assert f"[5/5] fitting the forecast models as of {d.date()} (none fitted on or before it)" in result.output
        out[name] = _model_versions(tmp_path / f"rt-{name}" / "warehouse.duckdb")
    assert out["full"] == out["cut"] and len(out["full"]) >= 2
    assert {row[0] for row in out["full"]} == {d.date()}

    again = runner.invoke(app, ["ingest", "--dir", str(full), "--calendar", "XLON", "--as-of", str(d.date())],
                          env={"AIS_RUNTIME_DIR": str(tmp_path / "rt-full"), "AIS_POLICIES_DIR": str(policies)})
    assert again.exit_code == 0 and f"fitted on or before {d.date()} already (kept)" in again.output
    from ais_pipelines import nightly

    con = duckdb.connect(str(tmp_path / "rt-full" / "warehouse.duckdb"), read_only=True)
    try:
        assert {m.fit_date for m in nightly.load_models(con, d)} == {d}  # the nightly step finds them
    finally:
        con.close()


def test_ingest_and_quality_show_on_the_parquet_store_equal_the_duckdb_file(tmp_path: Path) -> None:
    """Issue 15: the CLI opens the configured store too (``AIS_WAREHOUSE_STORE=parquet``): the same
    files ingested into the Parquet directory give the same tables and the same ``quality show``."""
    from ais_pipelines.warehouse_store import connect_warehouse, forget_cached

    files = tmp_path / "files"
    files.mkdir()
    sessions = sessions_between("XNYS", "2019-01-01", "2024-06-28")
    _walk_csv(files / "AAA.csv", sessions, 3)
    _walk_csv(files / "BBB.csv", sessions, 4, split_at=len(sessions) - 200)
    runner = CliRunner()
    tables = {}
    for store in ("duckdb", "parquet"):
        env = {"AIS_RUNTIME_DIR": str(tmp_path / store), "AIS_WAREHOUSE_STORE": store}
        result = runner.invoke(app, ["ingest", "--dir", str(files), "--no-refit"], env=env)
        assert result.exit_code == 0, result.output
        shown = runner.invoke(app, ["quality", "show", "BBB"], env=env)
        assert shown.exit_code == 0, shown.output
        tables[store] = shown.output
        where = tmp_path / store / ("warehouse.duckdb" if store == "duckdb" else "warehouse_parquet")
        assert where.exists()
        with connect_warehouse(where, read_only=True, store=store) as con:
            tables[store, "dq"] = con.execute("SELECT * FROM data_quality ORDER BY symbol").df()
            tables[store, "bars"] = con.execute("SELECT * EXCLUDE (run_id) FROM bars ORDER BY symbol, date").df()
    forget_cached()
    assert (tmp_path / "parquet" / "warehouse_parquet" / "bars" / "main.parquet").exists()
    assert tables["duckdb"] == tables["parquet"] and "BBB as of 2024-06-28: INVALID_DATA" in tables["parquet"]
    pd.testing.assert_frame_equal(tables["duckdb", "dq"], tables["parquet", "dq"])
    pd.testing.assert_frame_equal(tables["duckdb", "bars"], tables["parquet", "bars"])
