"""Sensor tick → first broker acknowledgement through the real daemon (not in process).

The service of ``tests/integration/test_daemon_e2e.py`` (code server, dagster-daemon,
dagster-webserver, fresh SQLite instance, QueuedRunCoordinator; PostgreSQL when
``AIS_TEST_POSTGRES_URL`` is set), the simulated market clock (each partition D executes in the
session after D) and the embedded paper broker. For each of the last ``--sessions`` XNYS
sessions D: the nightly run for D is launched through GraphQL and finishes; the execution sensor
is turned on and, on its own tick, launches ``intraday_execution_job`` for D in a new run worker
process; the sensor is turned off again. Latency = the tick's start (the daemon's tick timestamp)
→ the first broker acknowledgement in the run worker (the wall time ``PaperBroker.submit_order``
returned, recorded by a ``sitecustomize`` on the service's ``PYTHONPATH`` — the same hook
``bench_execution.py`` uses in process). Run:

    nice uv run python benchmarks/bench_daemon_latency.py [--sessions 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.test_daemon_e2e import (  # noqa: E402
    LOCATION,
    NY,
    GraphQL,
    _start,
    daemon_service,
    finished,
    wait_for,
)

SITECUSTOMIZE = '''
import os, time
_log = os.environ.get("AIS_BENCH_ACK_LOG")
if _log:
    from ais_pipelines.brokers.paper import PaperBroker
    _orig = PaperBroker.submit_order
    def _timed(self, *args, **kwargs):
        out = _orig(self, *args, **kwargs)
        with open(_log, "a") as fh:
            fh.write(f"{os.getpid()} {time.time():.6f}\\n")
        return out
    PaperBroker.submit_order = _timed
'''


def _sensor_ticks(gql: GraphQL) -> list[dict]:
    data = gql("""query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor {
        sensorState { id ticks(limit: 200) { status timestamp runIds skipReason } } } } }""",
               s={**LOCATION, "sensorName": "execution_sensor"})
    return data["sensorOrError"]["sensorState"]["ticks"]


def _stop_sensor(gql: GraphQL) -> None:
    state = gql("""query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor {
        sensorState { id selectorId } } } }""", s={**LOCATION, "sensorName": "execution_sensor"})
    st = state["sensorOrError"]["sensorState"]
    out = gql("""mutation($id: String, $sel: String) { stopSensor(id: $id, jobSelectorId: $sel) {
        __typename ... on PythonError { message } } }""", id=st["id"], sel=st["selectorId"])["stopSensor"]
    assert out["__typename"] == "StopSensorMutationResult", out


def _launch_nightly(gql: GraphQL, d: str) -> str:
    out = gql("""mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
        ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""", p={
        "selector": {**LOCATION, "jobName": "nightly_job"},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": d}]}, "runConfigData": "{}",
    })["launchRun"]
    assert out["__typename"] == "LaunchRunSuccess", out
    return str(out["run"]["runId"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/daemon_latency.md")
    args = ap.parse_args()
    from ais_pipelines.core.calendars import last_n_sessions

    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load = os.getloadavg()
    days = list(last_n_sessions("XNYS", datetime.now(NY).date(), args.sessions))
    root = Path(tempfile.mkdtemp(prefix="ais-bench-daemon-"))
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    acks = root / "acks.log"
    extra = {"AIS_BENCH_ACK_LOG": str(acks),
             "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    rows = []
    with daemon_service(root, days[-1], None, extra) as svc:
        gql: GraphQL = svc["gql"]
        for d in days:
            ds = str(d.date())
            assert finished(gql, _launch_nightly(gql, ds), timeout=600) == "SUCCESS", ds
            seen = {t["timestamp"] for t in _sensor_ticks(gql)}
            _start(gql, "sensor", "execution_sensor")
            tick = wait_for(f"the sensor's launch for {ds}", lambda seen=seen: [
                t for t in _sensor_ticks(gql) if t["status"] == "SUCCESS" and t["runIds"]
                and t["timestamp"] not in seen], timeout=180)[0]
            _stop_sensor(gql)
            run_id = tick["runIds"][0]
            assert finished(gql, run_id, timeout=300) == "SUCCESS", run_id
            stamps = [float(line.split()[1]) for line in acks.read_text().splitlines()] if acks.exists() else []
            after = [s for s in stamps if s >= float(tick["timestamp"])]
            start = gql("""query($r: ID!) { runOrError(runId: $r) { ... on Run { startTime } } }""",
                        r=run_id)["runOrError"]["startTime"]
            # a night whose approvals are all held for review or vetoed submits nothing: no ack to time
            rows.append({"d": ds, "latency_s": (min(after) - float(tick["timestamp"])) if after else None,
                         "acks": len(after),
                         "to_start_s": float(start) - float(tick["timestamp"])})
            acks.unlink(missing_ok=True)
            print(rows[-1], flush=True)
    lat = np.array([r["latency_s"] for r in rows if r["latency_s"] is not None])
    start_lat = np.array([r["to_start_s"] for r in rows])
    lines = [
        "## Sensor tick → first broker acknowledgement through the daemon",
        "",
        f"- started: {started} UTC; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- machine: {os.cpu_count()} cores, Python {platform.python_version()}; instance "
        f"{'PostgreSQL' if os.environ.get('AIS_TEST_POSTGRES_URL') else 'SQLite'}, QueuedRunCoordinator, "
        "simulated market clock, paper broker",
        "",
        "| session D | tick → run started (s) | tick → first acknowledgement (s) | acknowledgements |",
        "|---|---:|---:|---:|",
        *[f"| {r['d']} | {r['to_start_s']:.1f} | "
          f"{'no orders' if r['latency_s'] is None else format(r['latency_s'], '.1f')} | {r['acks']} |" for r in rows],
        "",
        f"Tick → first acknowledgement: median {np.median(lat):.1f} s, p95 {np.percentile(lat, 95):.1f} s over "
        f"{len(lat)} ticks that submitted orders; tick → run started: median "
        f"{np.median(start_lat):.1f} s, p95 {np.percentile(start_lat, 95):.1f} s over {len(start_lat)} ticks.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
