"""The whole code location loads from the one factory, and its graph is what the docs say."""

from __future__ import annotations

import dagster as dg
import pytest

from ais_pipelines.definitions import build_definitions, resources_for


@pytest.fixture(scope="module")
def defs(tmp_path_factory) -> dg.Definitions:
    return build_definitions(env="ci", runtime_root=str(tmp_path_factory.mktemp("runtime")))


def keys(defs: dg.Definitions) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def test_every_stage_is_an_asset(defs):
    expected = {
        "raw_daily_bars", "daily_bars", "data_quality", "data_quality_report", "market_features",
        "regime_probabilities", "forecast_models", "forecasts", "model_decay_metrics", "strategy_lifecycle",
        "strategy_candidates", "scenario_returns", "capital_auction", "portfolio_cvar", "order_proposals",
        "execution_context", "approved_orders", "executed_orders", "portfolio_state", "broker_reconciliation",
        "ledger_snapshot", "governance_report",
        *(f"marts/{m}" for m in ("data_quality", "model_decay_metrics", "capital_allocations",
                                 "governance_decisions", "strategy_lifecycle", "orders", "fills", "positions",
                                 "pnl_history")),
    }
    assert expected <= keys(defs)


def test_lineage_runs_from_bars_to_orders_to_marts(defs):
    g = defs.resolve_asset_graph()

    def parents(k: str) -> set[str]:
        return {p.to_user_string() for p in g.get(dg.AssetKey(k.split("/"))).parent_keys}

    assert parents("daily_bars") == {"raw_daily_bars"}
    assert "daily_bars" in parents("data_quality")
    assert {"market_features", "regime_probabilities"} <= parents("forecasts")
    assert "portfolio_cvar" in parents("order_proposals")
    assert "order_proposals" in parents("execution_context")
    assert "capital_auction" in {p for m in ("staging/stg_capital_allocations",) for p in parents(m)}


def test_blocking_checks_sit_next_to_their_assets(defs):
    checks = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    for pair in [
        ("raw_daily_bars", "raw_bars_schema"), ("daily_bars", "daily_bars_schema"),
        ("data_quality", "quality_gate"), ("data_quality", "history_gate"),
        ("capital_auction", "no_allocation_to_ineligible"), ("portfolio_cvar", "portfolio_cvar_within_limit"),
        ("portfolio_cvar", "component_cvar_within_limit"), ("order_proposals", "orders_have_impact_estimates"),
        ("executed_orders", "orders_have_valid_approvals"), ("executed_orders", "nothing_in_review_executed"),
    ]:
        assert pair in checks, pair


def test_jobs_schedules_sensors(defs):
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert {"nightly_job", "model_refit_job", "intraday_execution_job", "reconciliation_job", "reporting_job",
            "review_decision_job", "trading_control_job"} <= jobs
    assert {s.name for s in defs.schedules} == {"nightly_schedule", "model_refit_schedule"}
    assert {"execution_sensor", "reconciliation_sensor", "reporting_after_runs"} <= {s.name for s in defs.sensors}


def test_resources_are_chosen_per_environment(tmp_path):
    local, prod = resources_for("local", str(tmp_path)), resources_for("prod", str(tmp_path))
    assert local["market_data"].provider == "sample" and prod["market_data"].provider == "auto"
    assert prod["execution_clock"].mode == "system" and local["execution_clock"].mode == "simulated"
    with pytest.raises(ValueError, match="AIS_ENV"):
        resources_for("staging", str(tmp_path))


def test_reasoning_memos_sit_between_proposals_and_the_policy(defs):
    g = defs.resolve_asset_graph()
    parents = {p.to_user_string() for p in g.get(dg.AssetKey("reasoning_memos")).parent_keys}
    assert parents == {"order_proposals"}
    assert "reasoning_memos" in {p.to_user_string() for p in g.get(dg.AssetKey("execution_context")).parent_keys}
    nightly = defs.resolve_job_def("nightly_job")
    assert "reasoning_memos" in {k.to_user_string() for k in nightly.asset_layer.executable_asset_keys}
def test_schedules_and_sensors_run_by_themselves_only_in_local(defs, tmp_path):
    """Issue 14: local starts everything RUNNING (simulated clock, paper broker); ci/prod stopped."""
    every = [*defs.schedules, *defs.sensors]
    assert {d.name: d.default_status.value for d in every} == {d.name: "STOPPED" for d in every}
    local = build_definitions(env="local", runtime_root=str(tmp_path))
    every = [*local.schedules, *local.sensors]
    assert {d.name: d.default_status.value for d in every} == {d.name: "RUNNING" for d in every}


def test_nightly_assets_carry_the_declared_freshness_policy(defs):
    """Issue 14: the UI shows nightly assets fresh / overdue against policies/schedules.yaml."""
    g = defs.resolve_asset_graph()
    nightly = {k for k in g.get_all_asset_keys()
               if g.get(k).group_name in ("ingestion", "quality", "intelligence", "portfolio")}
    assert {"data_quality", "order_proposals"} <= {k.to_user_string() for k in nightly}
    for key in nightly:
        policy = g.get(key).freshness_policy
        assert policy is not None, key
        assert policy.deadline_cron == "30 21 * * 1-5" and policy.lower_bound_delta.total_seconds() == 3 * 3600
    assert g.get(dg.AssetKey("executed_orders")).freshness_policy is None  # intraday: driven by the sensor


def test_ui_tables_are_typed_and_rounded():
    import pandas as pd

    from assets._common import column_schema, ui_table

    frame = pd.DataFrame({"symbol": ["A", "B"], "weight": [0.123456789, float("nan")], "n": [1, 2],
                          "ok": [True, False]})
    table = ui_table(frame)
    assert [(c.name, c.type) for c in table.schema.columns] == [
        ("symbol", "string"), ("weight", "float"), ("n", "int"), ("ok", "bool")]
    assert table.records[0].data == {"symbol": "A", "weight": 0.1235, "n": 1, "ok": True}
    assert table.records[1].data["weight"] is None  # NaN is an empty cell, not "nan"
    assert [c.name for c in ui_table(frame.iloc[:0]).schema.columns] == list(frame.columns)
    assert [c.type for c in column_schema(frame).columns] == ["string", "float", "int", "bool"]


def test_review_queue_sensor_lists_pending_items_and_never_launches(tmp_path):
    """Issue 14: the UI's review queue — the sensor names each pending item and how to decide it."""
    from datetime import UTC, datetime

    from resources.trading import LedgerResource
    from sensors.review import review_queue_sensor

    defs = build_definitions(env="ci", runtime_root=str(tmp_path))
    sensor = defs.get_sensor_def("review_queue_sensor")
    ledger = LedgerResource(runtime_root=str(tmp_path))
    empty = sensor(dg.build_sensor_context(resources={"ledger": ledger}))
    assert isinstance(empty, dg.SkipReason) and "review queue empty" in empty.skip_message
    ledger.store().enqueue_review("review:2026-11-18:MSFT:BUY", {"symbol": "MSFT", "side": "BUY", "qty": 3},
                                  ["LOW_CONFIDENCE"], now=datetime(2026, 11, 19, 15, tzinfo=UTC))
    tick = sensor(dg.build_sensor_context(resources={"ledger": ledger}))
    assert isinstance(tick, dg.SkipReason)
    assert tick.skip_message.startswith("1 pending: review:2026-11-18:MSFT:BUY (LOW_CONFIDENCE)")
    assert "review_decision_job" in tick.skip_message
    assert review_queue_sensor.__module__ == "sensors.review"
