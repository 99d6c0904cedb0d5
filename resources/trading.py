"""Trading resources (§I1, §I4, §I5, §J2): ledger, signing key, execution clock, broker.

Each is the plain class of :mod:`ais_pipelines.trading_env` (fields and behaviour defined once,
shared with the Dagster-free ``ais`` CLI) with ``dg.ConfigurableResource`` mixed in; here a
failure is a ``dg.Failure`` without retries and with its reason code in the metadata. Nothing is
opened, read or connected at import time; secrets are read at the moment of use.

:func:`trading_resources_for` is the environment → resources mapping for these four, as data
(:func:`ais_pipelines.trading_env.trading_settings_for`).
"""

from __future__ import annotations

from typing import NoReturn

import dagster as dg

from ais_pipelines.trading_env import (
    BROKER_KINDS,
    CLOCK_MODES,
    BrokerSettings,
    ExecutionClock,
    Ledger,
    SigningKey,
    control_clock,
    execution_clock_settings,
    open_reconciliation_session,
    open_trading_session,
    session_after,
    trading_settings_for,
)

__all__ = [
    "BROKER_KINDS", "CLOCK_MODES", "BrokerResource", "ExecutionClockResource", "LedgerResource",
    "SigningKeyResource", "control_clock", "execution_clock_for", "open_reconciliation_session",
    "open_trading_session", "session_after", "trading_resources_for",
]


class _DagsterFailure:
    def _fail(self, description: str, reason_code: str | None = None) -> NoReturn:
        metadata = {"reason_code": str(reason_code)} if reason_code else None
        raise dg.Failure(description=description, metadata=metadata, allow_retries=False)


class LedgerResource(_DagsterFailure, dg.ConfigurableResource, Ledger):
    __doc__ = Ledger.__doc__


class SigningKeyResource(_DagsterFailure, dg.ConfigurableResource, SigningKey):
    __doc__ = SigningKey.__doc__


class ExecutionClockResource(_DagsterFailure, dg.ConfigurableResource, ExecutionClock):
    __doc__ = ExecutionClock.__doc__


class BrokerResource(_DagsterFailure, dg.ConfigurableResource, BrokerSettings):
    __doc__ = BrokerSettings.__doc__


def trading_resources_for(env: str, runtime_root: str) -> dict[str, dg.ConfigurableResource]:
    """Environment → trading resources, as data (merged into ``resources_for`` by the factory)."""
    s = trading_settings_for(env, runtime_root)
    return {"ledger": LedgerResource(**s["ledger"]), "signing_key": SigningKeyResource(**s["signing_key"]),
            "execution_clock": ExecutionClockResource(**s["execution_clock"]), "broker": BrokerResource(**s["broker"])}


def execution_clock_for(env: str, environ: dict[str, str] | None = None) -> ExecutionClockResource:
    """The execution clock resource of ``env`` (:func:`ais_pipelines.trading_env.execution_clock_settings`)."""
    return ExecutionClockResource(**execution_clock_settings(env, environ))
