"""Dead runs never block the living (issue 10): stale-run reaping and lease liveness.

A run killed with ``kill -9`` stays STARTED in the instance and keeps its ``duckdb`` pool
slot, so every later run of the pool would wait forever. Every run this project starts carries
its process in tags (``ais/pid``, ``ais/host``, see :func:`process_tags`); :func:`reap_dead_runs`
marks a started run whose process is provably gone as failed and frees its pool slots. It runs
at the start of every ``ais`` command that launches a run and on every execution-sensor tick;
Dagster's own run monitoring (``dagster.yaml``) covers runs launched by the daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import dagster as dg

from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.ledger.leases import Lease, process_alive

PID_TAG, HOST_TAG, LEASE_OWNER_TAG = "ais/pid", "ais/host", "ais/lease_owner"
CLI_OWNER_PREFIX = "cli:"  # lease owners that are an `ais execute` process, not a Dagster run
LIVE_STATUSES = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def process_tags() -> dict[str, str]:
    """Tags naming the process that executes a run in-process (the CLI)."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def run_process_gone(run: dg.DagsterRun) -> bool:
    """Whether the process that executes ``run`` is known to be dead (only for runs we tagged)."""
    pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
    if not pid or not host or not pid.isdigit():
        return False
    return not process_alive(int(pid), host)


def reap_dead_runs(instance: dg.DagsterInstance, log: Callable[[str], None] | None = None) -> list[str]:
    """Mark started runs whose process is gone as failed and free their concurrency slots.

    Also frees the slots still claimed by runs that already finished (a crash between the
    failure event and the slot release). Returns the run ids released.
    """
    released: list[str] = []
    for rec in instance.get_run_records(dg.RunsFilter(statuses=LIVE_STATUSES)):
        run = rec.dagster_run
        if not run_process_gone(run):
            continue
        message = (f"{ReasonCode.STALE_RUN_RELEASED}: process {run.tags.get(PID_TAG)} on {run.tags.get(HOST_TAG)} "
                   "is gone (killed); run marked failed, its pool slots released")
        instance.report_run_failed(run, message)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
        if log:
            log(f"{run.run_id}: {message}")
    storage = instance.event_log_storage
    try:
        keys = storage.get_concurrency_keys()
    except NotImplementedError:  # pragma: no cover - storages without pools
        return released
    for key in keys:
        for slot in storage.get_concurrency_info(key).claimed_slots:
            run = instance.get_run_by_id(slot.run_id)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(slot.run_id)
                released.append(slot.run_id)
    return released


def lease_owner_gone(instance: dg.DagsterInstance) -> Callable[[Lease], bool]:
    """A lease holder is gone when its Dagster run finished (failed, cancelled, succeeded)."""

    def gone(lease: Lease) -> bool:
        if lease.owner.startswith(CLI_OWNER_PREFIX):
            return False  # a CLI token, not a run: its pid decides (checked by the lease itself)
        run = instance.get_run_by_id(lease.owner)
        return run is not None and (run.is_finished or run_process_gone(run))

    return gone
