"""Schedules (§0): the nightly clock and the model refit clock, declared in policies/."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from ais_pipelines.as_of_calendar import as_of_calendars, is_as_of_session, last_as_of_session
from ais_pipelines.config import Policies
from resources.trading import ExecutionClockResource


def schedule_status(running: bool) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED


def nightly_session(scheduled: datetime, timezone: str, fixed_now: str | None = None,
                    calendars: tuple[str, ...] = ("XNYS",)) -> date | str:
    """The session D a nightly tick at ``scheduled`` materializes, or why there is none.

    Wall clock: the tick's own day in ``timezone``, if it is an as-of session of ``calendars``
    (the universe's, issue 13). With a fixed market clock (``AIS_EXECUTION_NOW``: tests,
    simulations) the wall-clock day does not matter: D is the last as-of session before the
    clock's day — the night before the morning it trades (issue 15).
    """
    if fixed_now:
        morning = datetime.fromisoformat(fixed_now).astimezone(ZoneInfo(timezone)).date()
        last = last_as_of_session(calendars, morning - timedelta(days=1))
        if last is None:
            return f"no session of {', '.join(calendars)} before {morning}"
        return last.date()
    day = scheduled.astimezone(ZoneInfo(timezone)).date()
    if not is_as_of_session(calendars, day):
        return f"{day} is not a session of {', '.join(calendars)}: nothing closed today"
    return day


def nightly_schedule(job: dg.UnresolvedAssetJobDefinition, policies: Policies, *,
                     running: bool = False) -> dg.ScheduleDefinition:
    spec = policies.schedules.nightly

    @dg.schedule(name="nightly_schedule", cron_schedule=spec.cron, job=job, execution_timezone=spec.timezone,
                 description=f"After the US close ({spec.cron} {spec.timezone}): materialize session D.",
                 default_status=schedule_status(running))
    def _nightly(context: dg.ScheduleEvaluationContext,
                 execution_clock: ExecutionClockResource) -> dg.RunRequest | dg.SkipReason:
        fixed = execution_clock.fixed_now if execution_clock.mode == "fixed" else None
        cals = as_of_calendars(policies.universe)  # the universe's as-of calendars (issue 13)
        day = nightly_session(context.scheduled_execution_time, spec.timezone, fixed, cals)
        if isinstance(day, str):
            return dg.SkipReason(day)
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
