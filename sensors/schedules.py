"""Schedules (§0): the nightly clock and the model refit clock, declared in policies/."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import dagster as dg

from ais_pipelines.as_of_calendar import as_of_calendars, is_as_of_session, last_as_of_session
from ais_pipelines.config import Policies


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
        cals = as_of_calendars(policies.universe)  # the universe's as-of calendars (issue 13)
        if not is_as_of_session(cals, day):
            return dg.SkipReason(f"{day} is not a session of {', '.join(cals)}: nothing closed today")
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
        last = last_as_of_session(as_of_calendars(policies.universe), day).date()
        return dg.RunRequest(run_key=f"refit-{last}", partition_key=str(last))

    return _refit
