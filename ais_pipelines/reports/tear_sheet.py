"""The replay's tear sheet (issue 12): one self-contained HTML file that renders offline.

Inline CSS, plots as inline base64 PNG (matplotlib, Agg), no script, no external reference.
Performance statistics come from empyrical-reloaded, not re-derived here. Reads only the
replay's own warehouse (``replay_sessions`` and the decision tables next to it).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

STAGES = ["DECOMMISSIONED", "INCUBATING", "SCALING", "HARVESTING"]
CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img.plot{max-width:100%;margin:.4em 0}
.note{color:#555;font-size:.85em}"""


def _img(fig) -> str:  # noqa: ANN001 - a matplotlib figure
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def _table(frame: pd.DataFrame, max_rows: int = 40) -> str:
    if frame.empty:
        return "<p class='note'>(none)</p>"
    shown = frame.head(max_rows).copy()
    for c in shown.select_dtypes("float").columns:
        shown[c] = shown[c].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    return shown.to_html(index=False, escape=True, border=0)


def performance_stats(returns: pd.Series) -> pd.DataFrame:
    """Daily-return statistics from empyrical (annualized on 252 sessions)."""
    import empyrical as ep

    r = returns.dropna()
    if len(r) < 2:
        return pd.DataFrame([{"statistic": "sessions", "value": float(len(r))}])
    stats = {
        "sessions": float(len(r)), "cumulative return": ep.cum_returns_final(r),
        "annual return": ep.annual_return(r), "annual volatility": ep.annual_volatility(r),
        "Sharpe ratio": ep.sharpe_ratio(r), "Sortino ratio": ep.sortino_ratio(r),
        "max drawdown": ep.max_drawdown(r), "Calmar ratio": ep.calmar_ratio(r),
        "daily VaR 95 %": ep.value_at_risk(r, cutoff=0.05),
        "daily CVaR 95 %": ep.conditional_value_at_risk(r, cutoff=0.05),
    }
    return pd.DataFrame([{"statistic": k, "value": float(v)} for k, v in stats.items()])


def cvar_backtest(track: pd.DataFrame) -> pd.DataFrame:
    """How often the realized H-session loss exceeded the VaR predicted at D, and by how much
    versus the predicted CVaR (sessions whose H-window ends after the replay are left out)."""
    t = track.dropna(subset=["realized_loss_h", "predicted_var"])
    exc = t[t["realized_loss_h"] > t["predicted_var"]]
    return pd.DataFrame([{
        "windows": len(t), "exceedances": len(exc), "exceedance_rate": len(exc) / len(t) if len(t) else math.nan,
        "expected_rate": 0.05,
        "mean_loss_on_exceedance": float(exc["realized_loss_h"].mean()) if len(exc) else math.nan,
        "mean_predicted_cvar_on_exceedance": float(exc["predicted_cvar"].mean()) if len(exc) else math.nan,
        "worst_loss_over_cvar": float((exc["realized_loss_h"] - exc["predicted_cvar"]).max()) if len(exc) else math.nan,
    }])


def write_tear_sheet(warehouse: Path, out: Path) -> Path:
    import duckdb
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from ais_pipelines.warehouse import read_table

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        track = read_table(con, "replay_sessions").sort_values("session_as_of")
        exposure = read_table(con, "replay_exposure")
        lifecycle = read_table(con, "strategy_lifecycle")
        transitions = read_table(con, "replay_lifecycle_transitions")
        hits = read_table(con, "replay_rule_hits")
    finally:
        con.close()
    days = pd.to_datetime(track["traded_session"])
    nav = pd.Series(track["nav"].astype(float).to_numpy(), index=days)
    first = float(track["nav"].iloc[0] - track["pnl_day"].iloc[0])
    rets = nav.pct_change()
    rets.iloc[0] = nav.iloc[0] / first - 1.0
    parts: list[str] = [f"<h1>Replay tear sheet: {track['session_as_of'].iloc[0]} → {track['session_as_of'].iloc[-1]}</h1>",
                        f"<p class='note'>{len(track)} sessions · starting NAV {first:,.0f} · final NAV "
                        f"{nav.iloc[-1]:,.0f} · warehouse {html.escape(str(warehouse))}</p>"]

    parts.append("<h2>Performance (empyrical)</h2>" + _table(performance_stats(rets)))

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    a1.plot(nav.index, nav.to_numpy(), color="#1f5fa0")
    a1.set_ylabel("NAV")
    a2.fill_between(days, -track["drawdown"].astype(float).to_numpy(), color="#b33", alpha=.6)
    a2.set_ylabel("drawdown")
    parts.append("<h2>NAV and drawdown</h2>" + _img(fig))

    import empyrical as ep

    window = min(63, max(5, len(rets) // 3))
    fig, ax = plt.subplots(figsize=(10, 3))
    if len(rets.dropna()) > window:
        sharpe = np.asarray(ep.roll_sharpe_ratio(rets, window=window), dtype=float)
        vol = np.asarray(ep.roll_annual_volatility(rets, window=window), dtype=float)
        ax.plot(rets.index[len(rets) - len(sharpe):], sharpe, label=f"rolling Sharpe ({window})")
        ax2 = ax.twinx()
        ax2.plot(rets.index[len(rets) - len(vol):], vol, color="#a60", label="rolling vol")
        ax2.set_ylabel("annual vol")
    ax.set_ylabel("Sharpe")
    parts.append("<h2>Rolling Sharpe and volatility</h2>" + _img(fig))

    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(days, track["predicted_cvar"].astype(float), label="predicted CVaR₉₅ (H)")
    ax.plot(days, track["predicted_var"].astype(float), label="predicted VaR₉₅ (H)", ls="--")
    ax.plot(days, track["realized_loss_h"].astype(float), label="realized H-session loss", color="#333")
    ax.axhline(float(track["cvar_limit"].iloc[0]), color="#b33", lw=.8, label="CVaR limit")
    ax.legend(fontsize=7)
    parts.append("<h2>Realized vs predicted CVaR (CVaR backtest)</h2>" + _img(fig) + _table(cvar_backtest(track)))

    if not exposure.empty:
        exposure["as_of"] = pd.to_datetime(exposure["as_of"])
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3))
        by_s = exposure.pivot_table(index="as_of", columns="strategy_id", values="weight", aggfunc="sum").fillna(0)
        a1.stackplot(by_s.index, by_s.T.to_numpy(), labels=list(by_s.columns))
        a1.legend(fontsize=7)
        a1.set_title("by strategy", fontsize=9)
        by_g = exposure.pivot_table(index="as_of", columns="stage", values="weight", aggfunc="sum").fillna(0)
        a2.stackplot(by_g.index, by_g.T.to_numpy(), labels=list(by_g.columns))
        a2.legend(fontsize=7)
        a2.set_title("by lifecycle stage", fontsize=9)
        parts.append("<h2>Exposure (target weight) by strategy and stage</h2>" + _img(fig))

    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(days, track["p_crisis_5d"].astype(float), label="p_crisis_5d", color="#a0a")
    ax.plot(days, track["invested_weight"].astype(float), label="invested weight", color="#1f5fa0")
    ax.plot(days, track["drawdown"].astype(float), label="drawdown", color="#b33")
    ax.legend(fontsize=7)
    parts.append("<h2>Regime probability against drawdown and exposure</h2>" + _img(fig))

    if not lifecycle.empty:
        lifecycle["as_of"] = pd.to_datetime(lifecycle["as_of"])
        fig, ax = plt.subplots(figsize=(10, 2.5))
        for sid, g in lifecycle.groupby("strategy_id"):
            ax.step(g["as_of"], g["stage"].map(STAGES.index), where="post", label=str(sid))
        ax.set_yticks(range(len(STAGES)), STAGES, fontsize=7)
        ax.legend(fontsize=7)
        parts.append("<h2>Lifecycle timeline</h2>" + _img(fig) + _table(transitions))

    fig, ax = plt.subplots(figsize=(10, 2.5))
    ax.bar(days, track["turnover"].astype(float), color="#888", label="turnover (weight)")
    ax2 = ax.twinx()
    ax2.plot(days, (track["trade_cost"].astype(float) * 1e4), color="#b33", label="trade cost (bps NAV)")
    parts.append("<h2>Turnover and cost</h2>" + _img(fig))

    gates = pd.DataFrame([{"decision": k, "orders": int(track[c].sum())}
                          for k, c in (("APPROVE", "approved"), ("REVIEW", "review"), ("REJECT", "rejected"))])
    modes = track["trading_mode"].value_counts().rename_axis("trading_mode").reset_index(name="sessions")
    parts.append("<h2>Gate pass / fail</h2>" + _table(gates) + _table(modes))
    vetoes = hits[hits["action"].astype(str).isin(["REJECT", "REVIEW"])] if not hits.empty else hits
    parts.append("<h2>Top vetoes and review reasons</h2>" + _table(vetoes.head(15)))
    shown = track[["session_as_of", "nav", "drawdown", "regime", "p_crisis_5d", "invested_weight", "predicted_cvar",
                   "orders", "fills", "approved", "review", "rejected", "trading_mode"]]
    parts.append("<h2>Sessions</h2>" + _table(shown, max_rows=400))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>Replay tear sheet</title>"
                   f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>", encoding="utf-8")
    return out


__all__ = ["cvar_backtest", "performance_stats", "write_tear_sheet"]
