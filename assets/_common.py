"""Small helpers shared by asset modules: metadata rendering and check results."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import dagster as dg
import pandas as pd

from ais_pipelines.core.schemas import validate_frame


def md_table(frame: pd.DataFrame, max_rows: int = 30) -> dg.MetadataValue:
    """A markdown table for the UI (first ``max_rows`` rows; floats rounded)."""
    if frame.empty:
        return dg.MetadataValue.md("_(no rows)_")
    shown = frame.head(max_rows).copy()
    for col in shown.select_dtypes("float").columns:
        shown[col] = shown[col].round(4)
    more = f"\n\n_{len(frame) - max_rows} more rows_" if len(frame) > max_rows else ""
    return dg.MetadataValue.md(shown.to_markdown(index=False) + more)


def schema_check(schema: type, frame: pd.DataFrame, *, what: str, max_cases: int = 20) -> dg.AssetCheckResult:
    """Run a pandera schema lazily; failures are an ERROR with the failing cases listed."""
    cases = validate_frame(schema, frame)
    return dg.AssetCheckResult(
        passed=not cases,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "rows_checked": len(frame),
            "failure_cases": len(cases),
            "schema": schema.__name__,
            "what": what,
            "cases": md_table(pd.DataFrame(cases[:max_cases])) if cases else dg.MetadataValue.md("_none_"),
        },
    )


def symbols_md(symbols: Sequence[str]) -> str:
    return ", ".join(symbols) if symbols else "none"


@contextmanager
def stage_failure() -> Iterator[None]:
    """A nightly step's missing input (``StageInputMissing``) fails the asset with its message."""
    from ais_pipelines.nightly import StageInputMissing

    try:
        yield
    except StageInputMissing as exc:
        raise dg.Failure(str(exc)) from exc
