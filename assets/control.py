"""The human control plane as Dagster jobs with run config (§H5, §J2): usable from the launchpad.

* ``review_decision_job`` — ``{item_id, decision: APPROVE|REJECT, actor, why}``. APPROVE re-checks
  the hard rules with a fresh quote, records the person's decision, signs a fresh approval and
  submits it through the OMS with all of its checks (then works it for the configured broker
  ticks); REJECT records the decision. Nothing in the review queue executes any other way.
* ``trading_control_job`` — ``{action: kill_switch|pause|resume|deleverage, actor, why[, to]}``.

Both call the plain functions of :mod:`ais_pipelines.control` (the CLI calls the same ones);
every override is audited with who and why. A refused action fails the run with its reason.

Launchpad example (review)::

    ops:
      review_decision:
        config: {item_id: "review:2024-03-04:MSFT:BUY", decision: APPROVE, actor: jane.doe,
                 why: "confidence low but thesis re-checked with the desk"}
"""

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ais_pipelines import control
from ais_pipelines import execution as ex
from ais_pipelines.config import Policies
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.oms.oms import OrderManagementSystem
from assets.execution import APPROVAL_TTL_S, pnl_history
from resources.policies import PoliciesResource
from resources.trading import (
    BrokerResource,
    ExecutionClockResource,
    LedgerResource,
    SigningKeyResource,
    control_clock,
    open_trading_session,
)


class ReviewDecisionConfig(dg.Config):
    item_id: str = Field(description="Review item id, e.g. review:2024-03-04:MSFT:BUY (`ais review list`).")
    decision: str = Field(description="APPROVE or REJECT.")
    actor: str = Field(description="Who decides: a person or role of policies/operators.yaml (audited).")
    why: str = Field(description="Why (mandatory, recorded in the audit log).")


class TradingControlConfig(dg.Config):
    action: str = Field(description="kill_switch | pause | resume | deleverage")
    actor: str = Field(description="Who (resume: a person or role of policies/operators.yaml).")
    why: str = Field(description="Why (mandatory, recorded in the audit log).")
    to: str = Field(default="ACTIVE", description="resume only: ACTIVE or REDUCING.")


def _fail(exc: control.ControlError) -> dg.Failure:
    codes = ";".join(exc.reason_codes) or str(ReasonCode.HUMAN_REJECTED)
    return dg.Failure(description=f"{codes}: {exc}", metadata={"reason_codes": codes}, allow_retries=False)


@dg.op(description="Apply a person's decision on one review-queue item (APPROVE submits through the OMS).")
def review_decision(
    context: dg.OpExecutionContext,
    config: ReviewDecisionConfig,
    policies: PoliciesResource,
    warehouse: DuckDBResource,
    ledger: LedgerResource,
    signing_key: SigningKeyResource,
    execution_clock: ExecutionClockResource,
    broker: BrokerResource,
) -> dg.Output[dict]:
    decision = config.decision.strip().upper()
    if decision not in control.REVIEW_DECISIONS:
        raise dg.Failure(f"decision must be one of {control.REVIEW_DECISIONS}, got {config.decision!r}")
    store = ledger.store()
    item = store.get_review(config.item_id)
    if item is None:
        raise _fail(control.ControlError(f"review item {config.item_id} does not exist"))
    pol = policies.load()
    if decision == "REJECT":
        _as_of, clock = control_clock(pol, store, execution_clock)
        try:
            done = control.reject_review(store, ledger.audit(), config.item_id, actor=config.actor, why=config.why,
                                         now=clock.now(), policies=pol)
        except control.ControlError as exc:
            raise _fail(exc) from exc
        return dg.Output({"item_id": done.item_id, "status": done.status},
                         metadata={"item_id": done.item_id, "status": done.status, "actor": config.actor})
    result = approve(pol, warehouse, ledger, signing_key, execution_clock, broker, config.item_id,
                     actor=config.actor, why=config.why)
    context.log.info(f"review {config.item_id} approved by {config.actor}: order state {result['state']}")
    return dg.Output(result, metadata={k: str(v) for k, v in result.items()})


def approve(
    pol: Policies,
    warehouse: DuckDBResource,
    ledger: LedgerResource,
    signing_key: SigningKeyResource,
    execution_clock: ExecutionClockResource,
    broker: BrokerResource,
    item_id: str,
    *,
    actor: str,
    why: str,
) -> dict:
    """APPROVE path shared with the CLI: fresh session for the item's D, recheck, sign, submit, work."""
    try:  # who first: an undeclared or service actor opens no session and fetches no quote
        control.authorize(pol, actor, "approve")
    except control.ControlError as exc:
        raise _fail(exc) from exc
    key = signing_key.key()  # fail closed before any broker call
    store = ledger.store()
    item = store.get_review(item_id)
    if item is None:
        raise _fail(control.ControlError(f"review item {item_id} does not exist"))
    as_of = str(item.order_payload.get("as_of"))
    try:
        env_policy = ex.load_environment_policy(policy_dir=pol.directory)
    except ex.PolicyError as exc:
        raise dg.Failure(f"{ReasonCode.POLICY_UNREADABLE}: {exc}", allow_retries=False) from exc
    with warehouse.get_connection() as con:
        session = open_trading_session(pol, con, as_of, ledger, execution_clock, broker,
                                       not_before=ex.latest_activity(store))
        history = pnl_history(con)
    oms = OrderManagementSystem(session.ledger, session.broker, key, session.clock, session.audit)
    try:
        outcome = control.approve_review(
            session.ledger, session.audit, oms, key, item_id, actor=actor, why=why, now=session.clock.now(),
            ttl_s=APPROVAL_TTL_S, recheck=lambda payload: ex.hard_rule_hits(session, env_policy, payload, history),
            policies=pol,
        )
    except control.ControlError as exc:
        raise _fail(exc) from exc
    if outcome.result is None:
        raise _fail(control.ControlError(f"the OMS refused the approved order of {item_id}", outcome.refused_codes))
    ex.work_orders(oms, session.broker, session.clock, broker.ticks, broker.tick_interval_s)
    order = session.ledger.get_order(outcome.result.client_order_id)
    assert order is not None
    return {"item_id": item_id, "status": outcome.item.status, "approval_id": outcome.approval.approval.approval_id,
            "client_order_id": order.client_order_id, "symbol": order.symbol, "side": order.side, "qty": order.qty,
            "state": str(order.state), "filled_qty": order.filled_qty, "avg_fill_price": order.avg_fill_price}


@dg.op(description="Kill switch, pause, resume or deleverage — by a named person, with a reason.")
def trading_control(
    context: dg.OpExecutionContext,
    config: TradingControlConfig,
    policies: PoliciesResource,
    ledger: LedgerResource,
    execution_clock: ExecutionClockResource,
) -> dg.Output[dict]:
    store = ledger.store()
    pol = policies.load()
    _as_of, clock = control_clock(pol, store, execution_clock)
    try:
        status = control.change_trading_state(store, ledger.audit(), config.action, actor=config.actor,
                                              why=config.why, now=clock.now(), to=config.to, policies=pol)
    except (control.ControlError, ValueError) as exc:
        raise _fail(exc if isinstance(exc, control.ControlError) else control.ControlError(str(exc))) from exc
    out = {"mode": str(status.mode), "actor": status.actor, "why": status.why,
           "reason_codes": ";".join(map(str, status.reason_codes))}
    context.log.info(f"trading state {out['mode']} ({config.action} by {config.actor}: {config.why})")
    return dg.Output(out, metadata=out)


@dg.job(description="A person approves or rejects one order from the review queue (§H5).")
def review_decision_job() -> None:
    review_decision()


@dg.job(description="Kill switch / pause / resume / deleverage with who and why (§J2).")
def trading_control_job() -> None:
    trading_control()
