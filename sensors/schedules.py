"""Schedules: the nightly clock (§0), declared in policies/schedules.yaml."""

from __future__ import annotations

import dagster as dg

from ais_pipelines.config import Policies


def nightly_schedule(job: dg.UnresolvedAssetJobDefinition, policies: Policies) -> dg.ScheduleDefinition:
    spec = policies.schedules.nightly
    return dg.ScheduleDefinition(
        name="nightly_schedule",
        job=job,
        cron_schedule=spec.cron,
        execution_timezone=spec.timezone,
        description=f"Nightly materialization after the close ({spec.cron} {spec.timezone}).",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
