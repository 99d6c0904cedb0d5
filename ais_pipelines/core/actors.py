"""Who is acting: people and roles versus service identities (§H5, §J2).

Human actions (resume, kill-switch release, approve, reject) must be done by a person or a
role declared in ``policies/operators.yaml`` (:class:`ais_pipelines.config.OperatorsPolicy`).
Names are compared after ``strip().casefold()`` so ``SYSTEM`` and `` system `` are the same
identity: a loophole closed by normalising, not by listing spellings.
"""

from __future__ import annotations

from ais_pipelines.core.reason_codes import ReasonCode

# Identities the product itself acts under. They may halt, pause or deleverage, but never lift
# a latch or decide for a person — whatever operators.yaml says (it can only add services).
SERVICE_ACTORS: frozenset[str] = frozenset(
    {
        "system",
        "oms",
        "governance",
        "reconciliation",
        "sensor",
        "sensors",
        "execution_sensor",
        "reconciliation_sensor",
        "policy",
        "policy_gate",
        "review_queue",
        "scheduler",
        "dagster",
    }
)


class ActorNotAuthorizedError(PermissionError):
    """The actor may not take this human action. Carries ACTOR_NOT_AUTHORIZED."""

    reason_code = ReasonCode.ACTOR_NOT_AUTHORIZED


def normalize_actor(actor: object) -> str:
    """The comparison key of an actor name (``""`` for anything that is not text)."""
    return actor.strip().casefold() if isinstance(actor, str) else ""


def is_service_actor(actor: object, extra: frozenset[str] = frozenset()) -> bool:
    key = normalize_actor(actor)
    return key in SERVICE_ACTORS or key in extra
