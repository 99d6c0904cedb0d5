"""Schedules (§0): the nightly clock and the model refit clock, declared in policies/."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from ais_pipelines.config import Policies
from ais_pipelines.core.calendars import is_session, last_n_sessions
from resources.trading import ExecutionClockResource


def schedule_status(running: bool) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED


def nightly_session(scheduled: datetime, timezone: str, fixed_now: str | None = None) -> date | str:
    """The session D a nightly tick at ``scheduled`` materializes, or why there is none.

    Wall clock: the tick's own day in ``timezone``, if it is an XNYS session. With a fixed market
    clock (``AIS_EXECUTION_NOW``: tests, simulations) the wall-clock day does not matter: D is the
    last XNYS session before the clock's day — the night before the morning it trades (issue 15).
    """
    if fixed_now:
        morning = datetime.fromisoformat(fixed_now).astimezone(ZoneInfo(timezone)).date()
        return last_n_sessions("XNYS", morning - timedelta(days=1), 1)[0].date()
    day = scheduled.astimezone(ZoneInfo(timezone)).date()
    if not is_session("XNYS", day):
        return f"{day} is not an XNYS session: nothing closed today"
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
        day = nightly_session(context.scheduled_execution_time, spec.timezone, fixed)
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
        last = last_n_sessions("XNYS", day, 1)[0].date()
        return dg.RunRequest(run_key=f"refit-{last}", partition_key=str(last))

    return _refit
