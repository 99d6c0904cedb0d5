"""Macro inputs recorded with the regime snapshot (§C3, issue 16): the VIX level from FRED
(VIXCLS) and the declared macro series, point in time; the realized-volatility proxy stays the
fallback, with ``VIX_PROXY_FALLBACK``.

Point in time: an observation counts for as-of session D only if its date is ≤ D **and** it
was published by then (``realtime_start`` ≤ D: VIXCLS of day t appears on t + 1, so on the
evening of D the newest usable value is usually D − 1's). Observations older than
``max_staleness_days`` calendar days are not used either (a dead feed is not a level).
Nothing here fetches: ``observations`` is what the ``macro_series`` asset stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ais_pipelines.core.reason_codes import ReasonCode

OBSERVATION_COLUMNS = ["series_id", "date", "value", "realtime_start", "realtime_end"]


def latest_as_of(observations: pd.DataFrame, series_id: str, as_of: Any,
                 max_staleness_days: int) -> tuple[float, str | None]:
    """(value, observation date) of the newest usable observation of ``series_id``; (NaN, None)."""
    if observations is None or observations.empty or "series_id" not in observations.columns:
        return math.nan, None
    ts = pd.Timestamp(as_of).normalize()
    o = observations[observations["series_id"] == series_id]
    dates = pd.to_datetime(o["date"], errors="coerce")
    published = pd.to_datetime(o["realtime_start"], errors="coerce") if "realtime_start" in o.columns \
        else pd.Series(pd.NaT, index=o.index)
    values = pd.to_numeric(o["value"], errors="coerce")
    ok = (dates <= ts) & (dates >= ts - pd.Timedelta(days=max_staleness_days)) & values.notna()
    ok &= published.isna() | (published <= ts)  # unknown vintage: the fetch was already as of D
    if not ok.any():
        return math.nan, None
    i = dates[ok].idxmax()
    return float(values[i]), dates[i].date().isoformat()


def macro_inputs(
    observations: pd.DataFrame,
    as_of: Any,
    *,
    vix_proxy: float,
    vix_series: str = "VIXCLS",
    series: Sequence[str] = (),
    max_staleness_days: int = 7,
    fetch_status: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The §C3 VIX level and macro values as of D, each with its source and observation date.

    ``vix_level`` is FRED's VIXCLS when a usable observation exists, else ``vix_proxy`` with
    ``vix_source = proxy`` and ``VIX_PROXY_FALLBACK`` in ``macro_reason_codes`` (plus why:
    ``fetch_status[vix_series]``, e.g. PROVIDER_NOT_ENTITLED). A declared series without a
    usable value is NaN with ``MACRO_SERIES_MISSING``.
    """
    status = dict(fetch_status or {})
    codes: list[str] = []
    out: dict[str, Any] = {}
    vix, vix_date = latest_as_of(observations, vix_series, as_of, max_staleness_days)
    if math.isnan(vix):
        out.update({"vix_level": float(vix_proxy), "vix_source": "proxy", "vix_obs_date": None})
        codes.append(str(ReasonCode.VIX_PROXY_FALLBACK))
        why = status.get(vix_series)
        if why and why != "OK":
            codes.append(why)
    else:
        out.update({"vix_level": vix, "vix_source": f"fred:{vix_series}", "vix_obs_date": vix_date})
    for sid in series:
        value, obs_date = latest_as_of(observations, sid, as_of, max_staleness_days)
        out[f"macro_{sid.lower()}"] = value
        out[f"macro_{sid.lower()}_date"] = obs_date
        if math.isnan(value):
            codes.append(str(ReasonCode.MACRO_SERIES_MISSING))
    out["macro_reason_codes"] = list(dict.fromkeys(codes))
    return out
