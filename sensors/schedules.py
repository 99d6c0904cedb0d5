"""Schedules (§0): the nightly clock and the model refit clock, declared in policies/."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import dagster as dg

from ais_pipelines.config import Policies
from ais_pipelines.core.calendars import is_session, last_n_sessions


def schedule_status(running: bool) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED


def nightly_schedule(job: dg.UnresolvedAssetJobDefinition, policies: Policies, *,
                     running: bool = False) -> dg.ScheduleDefinition:
    spec = policies.schedules.nightly

    @dg.schedule(name="nightly_schedule", cron_schedule=spec.cron, job=job, execution_timezone=spec.timezone,
                 description=f"After the US close ({spec.cron} {spec.timezone}): materialize session D.",
                 default_status=schedule_status(running))
    def _nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        day = context.scheduled_execution_time.astimezone(ZoneInfo(spec.timezone)).date()
        if not is_session("XNYS", day):
            return dg.SkipReason(f"{day} is not an XNYS session: nothing closed today")
        return dg.RunRequest(run_key=f"nightly-{day}", partition_key=str(day))

    return _nightly


def refit_schedule(job: dg.UnresolvedAssetJobDefinition, policies: Policies, *,
                   running: bool = False) -> dg.ScheduleDefinition:
    spec = policies.models.refit
    tz = policies.schedules.nightly.timezone

    @dg.schedule(name="model_refit_schedule", cron_schedule=spec.cron, job=job, execution_timezone=tz,
                 description=f"Refit forecast models ({spec.cadence}) on history up to the last session.",
                 default_status=schedule_status(running))
    def _refit(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        day = context.scheduled_execution_time.astimezone(ZoneInfo(tz)).date()
        last = last_n_sessions("XNYS", day, 1)[0].date()
        return dg.RunRequest(run_key=f"refit-{last}", partition_key=str(last))

    return _refit
