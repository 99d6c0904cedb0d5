"""System-level data health (issue 17): when is a bad feed a system fault?

Per-symbol problems exclude the symbol (the quality and history gates, WARN). A feed that is
*mostly* bad means nothing should trade: the night's data health is measured on four figures
and compared with the declared limits of ``policies/quality.yaml`` (``health``):

=========================  ===============================================================
tradable_share             tradable symbols / universe                   ≥ min_tradable_share
mean_quality_drop          trailing mean score − tonight's mean score    ≤ max_mean_quality_drop
provider_failure_rate      symbols the provider failed to deliver / all  ≤ max_provider_failure_rate
stale_share                symbols whose last bar is more than           ≤ max_stale_share
                           ``stale_after_sessions`` sessions before D
=========================  ===============================================================

Any breach → DATA_HEALTH_BREACH: a blocking ERROR check, trading REDUCING or HALTED per the
policy, an audit record. No Dagster here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd

from ais_pipelines.core.calendars import sessions_between
from ais_pipelines.core.reason_codes import ReasonCode

HEALTH_COLUMNS = ["metric", "value", "limit", "comparison", "breached", "detail"]


@dataclass(frozen=True)
class HealthLimits:
    min_tradable_share: float
    max_mean_quality_drop: float
    max_provider_failure_rate: float
    max_stale_share: float
    stale_after_sessions: int

    @classmethod
    def from_policy(cls, policy: Any) -> HealthLimits:
        return cls(policy.min_tradable_share, policy.max_mean_quality_drop, policy.max_provider_failure_rate,
                   policy.max_stale_share, policy.stale_after_sessions)


@dataclass(frozen=True)
class DataHealthReport:
    as_of: date
    table: pd.DataFrame  # HEALTH_COLUMNS, one row per metric
    stale_symbols: tuple[str, ...] = ()
    failed_symbols: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def breaches(self) -> pd.DataFrame:
        return self.table[self.table["breached"]]

    @property
    def ok(self) -> bool:
        return self.breaches.empty

    @property
    def reason_code(self) -> ReasonCode | None:
        return None if self.ok else ReasonCode.DATA_HEALTH_BREACH

    def summary(self) -> str:
        return describe_breaches(self.table) or "data health within limits"


def describe_breaches(table: pd.DataFrame) -> str:
    """``metric value <comparison> limit l; …`` for the breached rows of a HEALTH_COLUMNS table."""
    rows = table[table["breached"].astype(bool)] if len(table) else table
    return "; ".join(f"{r.metric} {r.value:.3f} {r.comparison} limit {r.limit:.3f}" for r in rows.itertuples())


def stale_symbols(quality: pd.DataFrame, as_of: date, after_sessions: int) -> list[str]:
    """Symbols whose last bar lies more than ``after_sessions`` sessions of their calendar before D
    (a symbol without any bar is stale)."""
    out = []
    day = pd.Timestamp(as_of).normalize()
    for sym, cal, last in zip(quality["symbol"], quality["calendar"], quality["last_date"], strict=True):
        if last is None or pd.isna(last):
            out.append(str(sym))
            continue
        last_ts = pd.Timestamp(last).tz_localize(None).normalize()
        if last_ts >= day:
            continue
        behind = len(sessions_between(str(cal), last_ts + pd.Timedelta(days=1), day))
        if behind > after_sessions:
            out.append(str(sym))
    return sorted(out)


def assess_data_health(
    quality: pd.DataFrame,
    ingestion_log: pd.DataFrame,
    trailing_mean_scores: pd.Series | list[float],
    limits: HealthLimits,
    as_of: date,
) -> DataHealthReport:
    """The four figures of the module docstring against ``limits``.

    ``quality``: tonight's data-quality table (symbol, calendar, last_date, tradable,
    data_quality_score). ``ingestion_log``: tonight's ingestion, one row per symbol with ``status``
    (OK / FAILED). ``trailing_mean_scores``: the mean score of each earlier assessed session
    (newest last); with none, the drop is 0 (nothing to compare with).
    """
    n = max(len(quality), 1)
    tradable = int(quality["tradable"].astype(bool).sum()) if len(quality) else 0
    tradable_share = tradable / n
    mean_now = float(quality["data_quality_score"].mean()) if len(quality) else 0.0
    trailing = [float(x) for x in trailing_mean_scores if pd.notna(x)]
    trailing_mean = sum(trailing) / len(trailing) if trailing else mean_now
    drop = max(0.0, trailing_mean - mean_now)
    if len(ingestion_log) and "status" in ingestion_log:
        failed = sorted(str(s) for s in ingestion_log.loc[ingestion_log["status"] != "OK", "symbol"])
        failure_rate = len(failed) / max(len(ingestion_log), 1)
    else:
        failed, failure_rate = [], 0.0
    stale = stale_symbols(quality, as_of, limits.stale_after_sessions) if len(quality) else []
    stale_share = len(stale) / n
    rows: list[Mapping[str, Any]] = [
        {"metric": "tradable_share", "value": tradable_share, "limit": limits.min_tradable_share, "comparison": "<",
         "breached": tradable_share < limits.min_tradable_share, "detail": f"{tradable} of {len(quality)} tradable"},
        {"metric": "mean_quality_drop", "value": drop, "limit": limits.max_mean_quality_drop, "comparison": ">",
         "breached": drop > limits.max_mean_quality_drop,
         "detail": f"mean score {mean_now:.3f} vs trailing {trailing_mean:.3f} over {len(trailing)} session(s)"},
        {"metric": "provider_failure_rate", "value": failure_rate, "limit": limits.max_provider_failure_rate,
         "comparison": ">", "breached": failure_rate > limits.max_provider_failure_rate,
         "detail": f"{len(failed)} of {len(ingestion_log)} failed: {', '.join(failed[:10])}"},
        {"metric": "stale_share", "value": stale_share, "limit": limits.max_stale_share, "comparison": ">",
         "breached": stale_share > limits.max_stale_share,
         "detail": f"{len(stale)} symbol(s) stale > {limits.stale_after_sessions} sessions: {', '.join(stale[:10])}"},
    ]
    table = pd.DataFrame(rows, columns=HEALTH_COLUMNS).astype({"value": "float64", "limit": "float64",
                                                                "breached": "bool"})
    metrics = {"tradable_share": tradable_share, "mean_quality_drop": drop, "provider_failure_rate": failure_rate,
               "stale_share": stale_share, "mean_score": mean_now, "trailing_mean_score": trailing_mean}
    return DataHealthReport(as_of, table, tuple(stale), tuple(failed), metrics)
