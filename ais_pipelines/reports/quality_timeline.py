"""When a symbol's data-quality problems happened (issue 13): the ``quality_flags`` events
of one as-of session summarised per symbol and period, for the governance and data-quality
reports and ``ais quality show``. Pure pandas, no rendering."""

from __future__ import annotations

import pandas as pd

# Events that are informational (the adjusted series is used): shown, never alarming.
INFORMATIONAL_FLAGS = frozenset({"split_adjusted", "dividend_adjusted"})


def flag_timeline(events: pd.DataFrame, *, freq: str = "year") -> pd.DataFrame:
    """Counts per (symbol, flag) and period (``year`` or ``month``), periods as columns,
    oldest first, plus ``total``, ``first`` and ``last`` session. Empty in, empty out."""
    if events is None or events.empty:
        return pd.DataFrame(columns=["symbol", "flag", "total", "first", "last"])
    ev = events.copy()
    session = pd.to_datetime(ev["session"])
    ev["period"] = session.dt.year.astype(str) if freq == "year" else session.dt.strftime("%Y-%m")
    counts = ev.pivot_table(index=["symbol", "flag"], columns="period", values="session", aggfunc="size",
                            fill_value=0)
    counts = counts.reindex(columns=sorted(counts.columns))
    span = ev.assign(session=session).groupby(["symbol", "flag"])["session"].agg(["min", "max", "size"])
    out = counts.join(span.rename(columns={"min": "first", "max": "last", "size": "total"}))
    out["first"] = out["first"].dt.date
    out["last"] = out["last"].dt.date
    out = out.reset_index()
    cols = ["symbol", "flag", "total", "first", "last", *[c for c in counts.columns]]
    return out[cols].sort_values(["symbol", "total"], ascending=[True, False], kind="stable").reset_index(drop=True)


def symbol_events(events: pd.DataFrame, symbol: str) -> pd.DataFrame:
    """One symbol's events, oldest first (case-insensitive symbol match)."""
    if events is None or events.empty:
        return pd.DataFrame(columns=["session", "flag", "reason_code", "value", "detail"])
    mine = events[events["symbol"].astype(str).str.upper() == symbol.upper()]
    return mine.sort_values(["session", "flag"], kind="stable")[
        ["session", "flag", "reason_code", "value", "detail"]].reset_index(drop=True)
