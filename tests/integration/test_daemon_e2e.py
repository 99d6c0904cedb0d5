"""The product as a service (issue 15): the real dagster-daemon drives the loop, observed
through dagster-webserver's GraphQL API.

One code server, one daemon, one webserver (each its own process group, killed by PID), a
fresh instance (SQLite; PostgreSQL when ``AIS_TEST_POSTGRES_URL`` is set) and the simulated
market clock fixed in the session after D (D = ``SESSION_D``, a fixed XNYS session, the sample
market ending on it). The schedule derives D from that fixed clock, not from the wall-clock day,
so the test runs on any day:

1. the nightly schedule (test cron: every minute) launches ``nightly_job`` for D by itself;
2. a failing evaluation of ``proposals_respect_risk_state`` is planted for D: the running
   execution sensor refuses, and the reason (UPSTREAM_CHECK_FAILED naming the check) is in its
   tick history;
3. ``order_proposals`` is recomputed with its real checks (they pass): the sensor launches the
   intraday run by itself;
4. a broker mismatch is planted (the paper broker's fills disagree with the ledger): the
   reconciliation sensor launches reconciliation, which pauses trading.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import yaml

from ais_pipelines.config import DEFAULT_POLICIES_DIR
from ais_pipelines.core.calendars import last_n_sessions, sessions_between

pytestmark = [pytest.mark.daemon, pytest.mark.slow, pytest.mark.timeout(480)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NY = ZoneInfo("America/New_York")
LOCATION = {"repositoryLocationName": "ais_pipelines", "repositoryName": "__repository__"}
PG_URL = os.environ.get("AIS_TEST_POSTGRES_URL")
SESSION_D = "2026-12-01"  # a XNYS session whose sample night proposes orders (see ``service``)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GraphQL:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = json.loads(resp.read())
        assert "errors" not in out, out["errors"]
        return out["data"]

    def ticks(self, sensor: str) -> list[dict[str, Any]]:
        data = self("""query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { __typename
            ... on Sensor { sensorState { ticks(limit: 100) { status skipReason runIds error { message } } } } } }""",
                    s={**LOCATION, "sensorName": sensor})
        return data["sensorOrError"]["sensorState"]["ticks"]

    def schedule_ticks(self, schedule: str) -> list[dict[str, Any]]:
        data = self("""query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s) {
            ... on Schedule { scheduleState { ticks(limit: 20) { status runIds } } } } }""",
                    s={**LOCATION, "scheduleName": schedule})
        return data["scheduleOrError"]["scheduleState"]["ticks"]

    def runs(self, job: str) -> list[dict[str, Any]]:
        data = self("""query($j: String!) { runsOrError(filter: {pipelineName: $j}) {
            ... on Runs { results { runId status } } } }""", j=job)
        return data["runsOrError"]["results"]

    def run_status(self, run_id: str) -> str:
        return self("""query($r: ID!) { runOrError(runId: $r) { ... on Run { status } } }""",
                    r=run_id)["runOrError"]["status"]


def wait_for(what: str, fn: Callable[[], Any], timeout: float, every: float = 2.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        try:
            got = fn()
        except (OSError, KeyError, TypeError):  # the webserver is still starting
            got = None
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def finished(gql: GraphQL, run_id: str, timeout: float) -> str:
    status = wait_for(f"run {run_id}", lambda: (s := gql.run_status(run_id)) in
                      ("SUCCESS", "FAILURE", "CANCELED") and s, timeout)
    return str(status)


def _policies(root: Path, d: pd.Timestamp) -> Path:
    pol = root / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, pol)
    sched = yaml.safe_load((pol / "schedules.yaml").read_text())
    sched["nightly"]["cron"] = "* * * * *"  # the test cron: every minute
    sched["intraday"] = {"execution_sensor_interval_s": 5, "reconciliation_sensor_interval_s": 5}
    (pol / "schedules.yaml").write_text(yaml.safe_dump(sched))
    prov = yaml.safe_load((pol / "providers.yaml").read_text())
    prov["sample"]["end_session"] = str(d.date())  # the sample market's last bar is D
    (pol / "providers.yaml").write_text(yaml.safe_dump(prov))
    return pol


@pytest.fixture
def service(tmp_path: Path) -> Iterator[dict[str, Any]]:
    # A fixed D, not the wall-clock day's: the sample market is synthetic, and on some days its
    # night's optimum is all cash (ending 2026-12-02: 45 candidates, none allocated), so the
    # sensor would rightly have nothing to launch. Ending on D, it proposes 8 orders.
    d = pd.Timestamp(SESSION_D)
    nxt = sessions_between("XNYS", d + pd.Timedelta(days=1), d + pd.Timedelta(days=10))[0]
    now = datetime.combine(nxt.date(), dtime(10, 30), NY)  # simulated clock: an hour into D+1
    with daemon_service(tmp_path, d, now) as svc:
        yield svc


@contextmanager
def daemon_service(root: Path, d: pd.Timestamp, now: datetime | None,
                   extra_env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Code server, daemon and webserver on a fresh instance under ``root``, the sample market
    ending on ``d``, models fitted; ``now``: the fixed market clock (None: the simulated one).
    Also used by ``benchmarks/bench_daemon_latency.py``."""
    from ais_pipelines.core.approvals import generate_dev_key_file

    home = root / "dagster_home"
    home.mkdir()
    runtime = root / "runtime"
    runtime.mkdir()
    key = runtime / "approval.key"
    generate_dev_key_file(key)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIS_", "DAGSTER_"))}
    env.update({
        "DAGSTER_HOME": str(home), "AIS_RUNTIME_DIR": str(runtime), "AIS_POLICIES_DIR": str(_policies(root, d)),
        "AIS_ENV": "ci", "AIS_APPROVAL_KEY_FILE": str(key),
        "DAGSTER_DISABLE_TELEMETRY": "true", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "GX_ANALYTICS_ENABLED": "false", **(extra_env or {}),
    })
    if now is not None:
        env["AIS_EXECUTION_NOW"] = now.isoformat()
    instance_cfg: dict[str, Any] = {
        "telemetry": {"enabled": False},
        "concurrency": {"pools": {"default_limit": 1}},
        "run_monitoring": {"enabled": True, "poll_interval_seconds": 5},
        "sensors": {"use_threads": True, "num_workers": 2},
    }
    dbnames: list[str] = []
    if PG_URL:  # fresh databases for this test's instance and ledger (each has its own alembic history)
        import sqlalchemy as sa

        tag = uuid.uuid4().hex[:8]
        dbnames = [f"ais_daemon_{tag}", f"ais_ledger_{tag}"]
        with sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT").connect() as c:
            for name in dbnames:
                c.execute(sa.text(f"CREATE DATABASE {name}"))
        base = PG_URL.rsplit("/", 1)[0]
        instance_cfg["storage"] = {"postgres": {"postgres_url": f"{base}/{dbnames[0]}"}}
        env["AIS_LEDGER_URL"] = f"{base}/{dbnames[1]}"
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_cfg))

    grpc_port, web_port = _free_port(), _free_port()
    (root / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
        "host": "127.0.0.1", "port": grpc_port, "location_name": "ais_pipelines"}}]}))
    logs = root / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        out = (logs / f"{name}.log").open("wb")
        procs.append(subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=REPO, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True))

    start("code_server", "dagster", "code-server", "start", "-h", "127.0.0.1", "-p", str(grpc_port),
          "-m", "ais_pipelines.definitions", "-a", "defs", "--location-name", "ais_pipelines")
    try:
        # The forecast models the night needs, fitted a week before D (as `ais demo` does), in
        # a child with the service's environment while the code server loads.
        fit = last_n_sessions("XNYS", d, 6)[0].date()
        refit = subprocess.Popen([str(BIN / "python"), "-c", (
            "import dagster as dg; from ais_pipelines.definitions import build_definitions as b; "
            f"r = b().resolve_job_def('model_refit_job').execute_in_process(instance=dg.DagsterInstance.get(), "
            f"partition_key='{fit}'); assert r.success")], cwd=REPO, env=env,
            stdout=(logs / "refit.log").open("wb"), stderr=subprocess.STDOUT)
        assert refit.wait(timeout=240) == 0, (logs / "refit.log").read_text()[-3000:]
        start("daemon", "dagster-daemon", "run", "-w", str(root / "workspace.yaml"))
        start("webserver", "dagster-webserver", "-w", str(root / "workspace.yaml"), "-h", "127.0.0.1",
              "-p", str(web_port))
        gql = GraphQL(web_port)
        wait_for("the code location", lambda: gql("""{ workspaceOrError { ... on Workspace { locationEntries {
            locationOrLoadError { __typename } } } } }""")["workspaceOrError"]["locationEntries"][0]
                 ["locationOrLoadError"]["__typename"] == "RepositoryLocation", timeout=180)
        yield {"gql": gql, "d": str(d.date()), "env": env, "logs": logs, "runtime": runtime}
    finally:
        for p in reversed(procs):  # Dagster in the background ignores SIGTERM: the group, by PID
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if dbnames:
            import sqlalchemy as sa

            with sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT").connect() as c:
                for name in dbnames:
                    c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _start(gql: GraphQL, kind: str, name: str) -> None:
    if kind == "schedule":
        out = gql("""mutation($s: ScheduleSelector!) { startSchedule(scheduleSelector: $s) { __typename
            ... on PythonError { message } } }""", s={**LOCATION, "scheduleName": name})["startSchedule"]
    else:
        out = gql("""mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename
            ... on PythonError { message } } }""", s={**LOCATION, "sensorName": name})["startSensor"]
    assert out["__typename"] in ("ScheduleStateResult", "Sensor"), out


def _stop_schedule(gql: GraphQL, name: str) -> None:
    state = gql("""query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s) {
        ... on Schedule { scheduleState { id selectorId } } } }""",
                s={**LOCATION, "scheduleName": name})["scheduleOrError"]["scheduleState"]
    out = gql("""mutation($id: String, $sel: String) { stopRunningSchedule(id: $id, scheduleSelectorId: $sel) {
        __typename ... on PythonError { message } } }""", id=state["id"], sel=state["selectorId"])
    assert out["stopRunningSchedule"]["__typename"] == "ScheduleStateResult", out
    status = gql("""query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s) {
        ... on Schedule { scheduleState { status } } } }""",
                 s={**LOCATION, "scheduleName": name})["scheduleOrError"]["scheduleState"]["status"]
    assert status == "STOPPED", status


def _store(env: dict[str, str]):  # type: ignore[no-untyped-def]
    from resources.trading import LedgerResource

    return LedgerResource(url=env.get("AIS_LEDGER_URL"), runtime_root=env["AIS_RUNTIME_DIR"]).store()


def test_daemon_drives_nightly_execution_and_reconciliation(service: dict[str, Any]) -> None:
    import dagster as dg
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )
    from sqlalchemy import update

    from ais_pipelines.core.reason_codes import ReasonCode
    from ais_pipelines.core.trading_state import TradingMode
    from ais_pipelines.ledger import models as m

    gql: GraphQL = service["gql"]
    d = service["d"]

    # 1. the schedule launches the night for D
    _start(gql, "schedule", "nightly_schedule")
    tick = wait_for("the schedule's launch", lambda: [t for t in gql.schedule_ticks("nightly_schedule")
                                                      if t["status"] == "SUCCESS" and t["runIds"]], timeout=90)
    _stop_schedule(gql, "nightly_schedule")  # the test cron would launch D again every minute
    night = gql.runs("nightly_job")
    assert [r["runId"] for r in night] == tick[0]["runIds"]
    assert finished(gql, night[0]["runId"], timeout=300) == "SUCCESS", (service["logs"] / "daemon.log")

    # 2. a failed check for D (planted as an external evaluation): the sensor refuses, and says why
    check = dg.AssetCheckKey(dg.AssetKey("order_proposals"), "proposals_respect_risk_state")
    with _instance(service["env"]) as instance:  # targets D's materialization, like a real one
        mat = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=check.asset_key, asset_partitions=[d]), limit=1).records[0]
        instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=check.asset_key, check_name=check.name, passed=False, partition=d,
            severity=dg.AssetCheckSeverity.ERROR, metadata={"reason_code": "PLANTED_BY_TEST"},
            target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
                storage_id=mat.storage_id, run_id=mat.run_id, timestamp=mat.timestamp)))
    _start(gql, "sensor", "execution_sensor")
    refusal = wait_for("the execution sensor's refusal", lambda: [
        t for t in gql.ticks("execution_sensor") if t["status"] == "SKIPPED" and t["skipReason"]], timeout=90)
    reason = refusal[-1]["skipReason"]
    assert reason.startswith(f"{ReasonCode.UPSTREAM_CHECK_FAILED}: order_proposals:proposals_respect_risk_state "
                             f"for partition {d} failed with ERROR [PLANTED_BY_TEST]"), reason
    assert gql.runs("intraday_execution_job") == []

    # 3. order_proposals recomputed with its real checks (they pass): the sensor launches the
    # intraday run by itself
    launched = gql("""mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
        ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""", p={
        "selector": {**LOCATION, "jobName": "nightly_job", "assetSelection": [{"path": ["order_proposals"]}],
                     "assetCheckSelection": [{"assetKey": {"path": ["order_proposals"]}, "name": n}
                                             for n in ("proposals_respect_risk_state", "orders_have_impact_estimates")]},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": d}]}, "runConfigData": "{}",
    })["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    assert finished(gql, launched["run"]["runId"], timeout=180) == "SUCCESS"
    tick = wait_for("the execution sensor's launch", lambda: [
        t for t in gql.ticks("execution_sensor") if t["status"] == "SUCCESS" and t["runIds"]], timeout=90)
    run_id = tick[0]["runIds"][0]
    assert [r["runId"] for r in gql.runs("intraday_execution_job")] == [run_id]
    assert finished(gql, run_id, timeout=240) == "SUCCESS"

    # 4. the broker's fills disagree with the ledger: the reconciliation sensor pauses trading
    store = _store(service["env"])
    assert store.current_trading_status().mode is TradingMode.ACTIVE
    with store.engine.begin() as conn:
        assert conn.execute(update(m.paper_fills).values(qty=m.paper_fills.c.qty + 1.0)).rowcount > 0
    _start(gql, "sensor", "reconciliation_sensor")
    rtick = wait_for("the reconciliation sensor's launch", lambda: [
        t for t in gql.ticks("reconciliation_sensor") if t["status"] == "SUCCESS" and t["runIds"]], timeout=90)
    finished(gql, rtick[0]["runIds"][0], timeout=180)
    status = _store(service["env"]).current_trading_status()
    assert status.mode is TradingMode.PAUSED, status
    assert ReasonCode.RECONCILIATION_MISMATCH in status.reason_codes


def _instance(env: dict[str, str]):  # type: ignore[no-untyped-def]
    """The service's instance, opened from its DAGSTER_HOME in this process."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"]))
