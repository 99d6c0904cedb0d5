"""Small helpers shared by asset modules: metadata rendering and check results."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pandas as pd

from ais_pipelines.core.schemas import validate_frame


def _ui_type(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    return "string"


def _ui_value(value: Any, kind: str) -> Any:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if kind == "float":
        return round(float(value), 4)  # the UI shows 4 decimals, never e-notation noise
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return str(value)


def ui_table(frame: pd.DataFrame, max_rows: int = 30) -> dg.MetadataValue:
    """A typed table for the UI (``TableSchema`` with column types; first ``max_rows`` rows;
    floats rounded to 4 decimals). An empty frame is an empty table that still has its columns."""
    shown = frame.head(max_rows)
    kinds = {str(c): _ui_type(shown[c].dtype) for c in shown.columns}
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in kinds.items()])
    records = [dg.TableRecord({name: _ui_value(v, kinds[name]) for name, v in zip(kinds, row, strict=True)})
               for row in shown.itertuples(index=False, name=None)]
    return dg.MetadataValue.table(records=records, schema=schema)


def column_schema(frame: pd.DataFrame) -> dg.TableSchema:
    """The written table's columns and types (``dagster/column_schema`` on warehouse assets)."""
    return dg.TableSchema(columns=[dg.TableColumn(str(c), _ui_type(frame[c].dtype)) for c in frame.columns])


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
            "cases": ui_table(pd.DataFrame(cases[:max_cases])) if cases else dg.MetadataValue.md("_none_"),
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
