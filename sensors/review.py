"""The review queue in the UI (issue 14): a sensor that lists the pending review items on every tick.

It never launches a run — a review decision is a person's — so each tick is a skip whose reason
names the pending items and how to decide them (``review_decision_job`` in the launchpad, or
``uv run ais review approve|reject ID``). The tick history is the queue as the UI sees it.
"""

from __future__ import annotations

import dagster as dg

from ais_pipelines.config import Policies
from resources.trading import LedgerResource
from sensors.execution import sensor_status

MAX_LISTED = 20


def pending_reviews_line(ledger: LedgerResource) -> str:
    items = ledger.store().list_reviews("PENDING")
    if not items:
        return "review queue empty: nothing waits for a person"
    shown = [f"{r.item_id} ({';'.join(r.reasons) or 'REVIEW'})" for r in items[:MAX_LISTED]]
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return (f"{len(items)} pending: " + ", ".join(shown) + more
            + " — decide with review_decision_job (item_id, APPROVE|REJECT, actor, why) "
              "or `uv run ais review approve|reject ID`")


def review_queue_sensor(job: dg.JobDefinition, policies: Policies, *, running: bool = False) -> dg.SensorDefinition:
    @dg.sensor(name="review_queue_sensor", job=job,
               minimum_interval_seconds=policies.schedules.intraday.reconciliation_sensor_interval_s,
               default_status=sensor_status(running),
               description="Lists the pending review items on every tick (never launches: a person decides "
               "with review_decision_job).")
    def _review_queue(context: dg.SensorEvaluationContext, ledger: LedgerResource) -> dg.SkipReason:
        return dg.SkipReason(pending_reviews_line(ledger))

    return _review_queue
