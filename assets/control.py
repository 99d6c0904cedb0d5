"""The human control plane as Dagster jobs with run config (§H5, §J2): usable from the launchpad.

* ``review_decision_job`` — ``{item_id, decision: APPROVE|REJECT, actor, why}``. APPROVE re-checks
  the hard rules with a fresh quote, records the person's decision, signs a fresh approval and
  submits it through the OMS with all of its checks (then works it for the configured broker
  ticks); REJECT records the decision. Nothing in the review queue executes any other way.
* ``trading_control_job`` — ``{action: kill_switch|pause|resume|deleverage, actor, why[, to]}``.

Both call the plain functions of :mod:`ais_pipelines.control` (the CLI calls the same ones);
every override is audited with who and why. A refused action fails the run with its reason.

The launchpad edits only the decision (a config mapping; resources come from the definitions,
so no resource config clutters the editor). Example (review)::

    item_id: "review:2024-03-04:MSFT:BUY"
    decision: APPROVE
    actor: jane.doe
    why: "confidence low but thesis re-checked with the desk"
"""

from enum import Enum

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ais_pipelines import control
from ais_pipelines.config import Policies
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import ResumeTo
from resources.policies import PoliciesResource
from resources.trading import (
    BrokerResource,
    ExecutionClockResource,
    LedgerResource,
    SigningKeyResource,
    control_clock,
)

APPROVAL_TTL_S = control.APPROVAL_TTL_S


class ReviewDecision(Enum):
    """What a person decides about one review item (a choice in the launchpad, not free text)."""

    APPROVE = "APPROVE"
    REJECT = "REJECT"


class TradingAction(Enum):
    kill_switch = "kill_switch"
    pause = "pause"
    resume = "resume"
    deleverage = "deleverage"


class ReviewDecisionConfig(dg.Config):
    item_id: str = Field(description="Review item id, e.g. review:2024-03-04:MSFT:BUY; `ais review list` "
                         "lists the pending ones.")
    decision: ReviewDecision = Field(description="APPROVE (re-check, sign, submit) or REJECT (nothing is sent).")
    actor: str = Field(description="Who decides: a person or role of policies/operators.yaml (audited).")
    why: str = Field(description="Why (mandatory, recorded in the audit log).")


class TradingControlConfig(dg.Config):
    action: TradingAction = Field(description="kill_switch | pause | resume | deleverage")
    actor: str = Field(description="Who (resume: a person or role of policies/operators.yaml).")
    why: str = Field(description="Why (mandatory, recorded in the audit log).")
    to: ResumeTo = Field(default=ResumeTo.ACTIVE, description="resume only: ACTIVE or REDUCING.")


def _fail(exc: control.ControlError) -> dg.Failure:
    codes = ";".join(exc.reason_codes) or str(ReasonCode.USAGE_ERROR)
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
    pol = policies.load()
    if config.decision is ReviewDecision.REJECT:
        store = ledger.store()
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
    """The APPROVE path (:func:`ais_pipelines.control.approve_item`, shared with the CLI) as a step."""
    try:
        return control.approve_item(pol, warehouse.database, ledger, signing_key, execution_clock, broker,
                                    item_id, actor=actor, why=why)
    except control.ControlError as exc:
        raise _fail(exc) from exc


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
        status = control.change_trading_state(store, ledger.audit(), config.action.value, actor=config.actor,
                                              why=config.why, now=clock.now(), to=config.to.value, policies=pol)
    except (control.ControlError, ValueError) as exc:
        raise _fail(exc if isinstance(exc, control.ControlError)
                    else control.ControlError(str(exc), (ReasonCode.USAGE_ERROR,))) from exc
    out = {"mode": str(status.mode), "actor": status.actor, "why": status.why,
           "reason_codes": ";".join(map(str, status.reason_codes))}
    context.log.info(f"trading state {out['mode']} ({config.action.value} by {config.actor}: {config.why})")
    return dg.Output(out, metadata=out)


@dg.config_mapping
def review_launchpad_config(config: ReviewDecisionConfig) -> dict:
    """The launchpad edits only the decision (resources come from the definitions)."""
    return {"ops": {"review_decision": {"config": config.model_dump(mode="json")}}}


@dg.job(description="A person approves or rejects one order from the review queue (§H5).",
        config=review_launchpad_config)
def review_decision_job() -> None:
    review_decision()


@dg.config_mapping
def control_launchpad_config(config: TradingControlConfig) -> dict:
    return {"ops": {"trading_control": {"config": config.model_dump(mode="json")}}}


@dg.job(description="Kill switch / pause / resume / deleverage with who and why (§J2).",
        config=control_launchpad_config)
def trading_control_job() -> None:
    trading_control()
