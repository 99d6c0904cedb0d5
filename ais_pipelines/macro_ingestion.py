"""Nightly fetch of the regime's FRED series (§C3, issue 16): VIXCLS and the declared macro
series, as known on session D (FRED real-time period = D), archived raw like the bars (§B2).

No Dagster here: the ``macro_series`` asset calls :func:`fetch_macro_series`. Without a FRED
entitlement nothing is called (§A4) and every series is recorded PROVIDER_NOT_ENTITLED; a
failed series is recorded with its provider reason code and never stops the others. The
regime then falls back to the proxy (``VIX_PROXY_FALLBACK``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.regime_macro import OBSERVATION_COLUMNS
from ais_pipelines.ingestion import archive_raw
from ais_pipelines.market_data.base import FetchResult, ProviderError

STATUS_COLUMNS = ["series_id", "status", "reason_code", "detail", "rows", "raw_path"]


@dataclass
class MacroOutcome:
    observations: pd.DataFrame  # OBSERVATION_COLUMNS
    status: pd.DataFrame  # STATUS_COLUMNS, one row per declared series
    lineage: dict[str, Any] = field(default_factory=dict)

    def reason_by_series(self) -> dict[str, str]:
        return {str(r.series_id): (str(r.reason_code) or "OK") for r in self.status.itertuples()}


def fetch_macro_series(fred: Any, series: list[str], as_of: date, lookback_days: int,
                       archive_dir: Path) -> MacroOutcome:
    """Each series over ``[as_of − lookback_days, as_of]`` as known on ``as_of``; ``fred`` None = not entitled."""
    parts: list[pd.DataFrame] = []
    status: list[dict[str, Any]] = []
    lineage: dict[str, Any] = {}
    start = as_of - timedelta(days=lookback_days)
    for sid in dict.fromkeys(series):
        if fred is None:
            status.append({"series_id": sid, "status": "SKIPPED", "reason_code": str(ReasonCode.PROVIDER_NOT_ENTITLED),
                           "detail": "FRED_API_KEY not set: fred is never called", "rows": 0, "raw_path": ""})
            continue
        try:
            frame, raw, lin = fred.fetch_series(sid, start, as_of, realtime=as_of)
        except ProviderError as exc:
            status.append({"series_id": sid, "status": "FAILED", "reason_code": str(exc.reason_code),
                           "detail": str(exc), "rows": 0, "raw_path": ""})
            continue
        path = archive_raw(archive_dir, FetchResult(symbol=sid, provider="fred", frame=frame, raw=raw, lineage=lin))
        parts.append(frame)
        lineage[sid] = lin
        empty = frame["value"].notna().sum() == 0
        status.append({"series_id": sid, "status": "EMPTY" if empty else "OK",
                       "reason_code": str(ReasonCode.PROVIDER_EMPTY_RESPONSE) if empty else "",
                       "detail": "" if not empty else f"no value in {start}..{as_of}", "rows": len(frame),
                       "raw_path": str(path)})
    obs = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=OBSERVATION_COLUMNS)
    obs = obs.reindex(columns=OBSERVATION_COLUMNS)
    obs["value"] = pd.to_numeric(obs["value"], errors="coerce").astype("float64")
    for col in ("series_id", "realtime_start", "realtime_end"):
        obs[col] = obs[col].astype("string")
    obs["date"] = pd.to_datetime(obs["date"])
    return MacroOutcome(obs, pd.DataFrame(status, columns=STATUS_COLUMNS), lineage)
