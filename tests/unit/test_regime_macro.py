"""§C3 FRED inputs point in time, and the proxy fallback with its reason code."""

from __future__ import annotations

import math

import pandas as pd

from ais_pipelines.core.regime_macro import latest_as_of, macro_inputs


def obs(rows: list[tuple[str, str, float, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["series_id", "date", "value", "realtime_start"]).assign(realtime_end="x")


OBS = obs([
    ("VIXCLS", "2026-11-17", 17.1, "2026-11-18"),
    ("VIXCLS", "2026-11-18", 18.4, "2026-11-19"),
    ("VIXCLS", "2026-11-19", 19.9, "2026-11-20"),
    ("VIXCLS", "2026-11-20", 25.0, "2026-11-21"),  # published after D: must not be used for D
    ("VIXCLS", "2026-11-21", math.nan, "2026-11-22"),
    ("T10Y2Y", "2026-11-10", 0.45, "2026-11-11"),
])


def test_vix_is_the_newest_value_published_by_d() -> None:
    out = macro_inputs(OBS, "2026-11-20", vix_proxy=12.0, series=["T10Y2Y"], max_staleness_days=10)
    assert out["vix_level"] == 19.9 and out["vix_obs_date"] == "2026-11-19" and out["vix_source"] == "fred:VIXCLS"
    assert out["macro_t10y2y"] == 0.45 and out["macro_t10y2y_date"] == "2026-11-10"
    assert out["macro_reason_codes"] == []
    # the next day the D value has been published
    assert macro_inputs(OBS, "2026-11-21", vix_proxy=12.0)["vix_level"] == 25.0


def test_stale_and_missing_series() -> None:
    out = macro_inputs(OBS, "2026-11-20", vix_proxy=12.0, series=["T10Y2Y", "BAMLH0A0HYM2"], max_staleness_days=5)
    assert math.isnan(out["macro_t10y2y"]) and math.isnan(out["macro_bamlh0a0hym2"])  # 10 days old: too stale
    assert out["macro_reason_codes"] == ["MACRO_SERIES_MISSING"]
    assert latest_as_of(OBS, "VIXCLS", "2026-12-31", 7) == (math.nan, None)


def test_proxy_fallback_names_why() -> None:
    out = macro_inputs(pd.DataFrame(), "2026-11-20", vix_proxy=14.5,
                       fetch_status={"VIXCLS": "PROVIDER_NOT_ENTITLED"})
    assert out["vix_level"] == 14.5 and out["vix_source"] == "proxy" and out["vix_obs_date"] is None
    assert out["macro_reason_codes"] == ["VIX_PROXY_FALLBACK", "PROVIDER_NOT_ENTITLED"]
