"""Policy what-if (§L2, issue 12): a replay under proposed policies diffed against a baseline
replay of the same sessions, decision by decision, as a Markdown report a risk officer reads."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SIDE_BY_SIDE = ["nav", "drawdown", "predicted_cvar", "turnover", "invested_weight", "orders"]


def _read(db: Path, sql: str) -> pd.DataFrame:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def decision_diff(baseline: Path, proposed: Path) -> pd.DataFrame:
    """Per session and order: old → new governance decision and the rule hits that differ."""
    q = "SELECT as_of, order_id, decision FROM governance_decisions"
    h = "SELECT as_of, order_id, string_agg(rule_id, ',' ORDER BY rule_id) AS rules FROM governance_rule_hits GROUP BY ALL"
    old = _read(baseline, q).merge(_read(baseline, h), on=["as_of", "order_id"], how="left")
    new = _read(proposed, q).merge(_read(proposed, h), on=["as_of", "order_id"], how="left")
    m = old.merge(new, on=["as_of", "order_id"], how="outer", suffixes=("_old", "_new"))
    for c in ("decision_old", "decision_new", "rules_old", "rules_new"):
        m[c] = m[c].fillna("—")
    changed = m[(m["decision_old"] != m["decision_new"]) | (m["rules_old"] != m["rules_new"])].copy()
    changed["symbol"] = changed["order_id"].str.split(":").str[1]

    def differing(r: pd.Series) -> str:
        a = set(str(r["rules_old"]).split(",")) - {"—"}
        b = set(str(r["rules_new"]).split(",")) - {"—"}
        return ", ".join([f"-{x}" for x in sorted(a - b)] + [f"+{x}" for x in sorted(b - a)])

    changed["rule_hits_changed"] = changed.apply(differing, axis=1) if len(changed) else []
    return changed[["as_of", "symbol", "order_id", "decision_old", "decision_new", "rule_hits_changed"]].sort_values(
        ["as_of", "order_id"]).reset_index(drop=True)


def metrics_side_by_side(baseline: Path, proposed: Path) -> pd.DataFrame:
    cols = ", ".join(["session_as_of", *SIDE_BY_SIDE])
    a = _read(baseline, f"SELECT {cols} FROM replay_sessions")
    b = _read(proposed, f"SELECT {cols} FROM replay_sessions")
    return a.merge(b, on="session_as_of", how="outer", suffixes=("_baseline", "_proposed")).sort_values(
        "session_as_of").reset_index(drop=True)


def write_what_if(baseline: Path, proposed: Path, out: Path) -> Path:
    diff = decision_diff(baseline, proposed)
    side = metrics_side_by_side(baseline, proposed)
    lines = ["# Policy what-if", "", f"Baseline: `{baseline}`  ", f"Proposed: `{proposed}`", "",
             f"## Decisions that changed ({len(diff)})", "",
             diff.to_markdown(index=False) if len(diff) else "_none_", "",
             "## NAV, drawdown, CVaR and turnover side by side", "",
             side.to_markdown(index=False, floatfmt=".6g"), ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
