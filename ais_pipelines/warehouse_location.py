"""Which warehouse store is configured and where a runtime directory keeps it (issue 15).

No DuckDB import here: every ``ais`` command resolves the path, few open it.
"""

from __future__ import annotations

import os
from pathlib import Path

STORES = ("duckdb", "parquet")
STORE_ENV = "AIS_WAREHOUSE_STORE"


def configured_store() -> str:
    """``AIS_WAREHOUSE_STORE`` (default ``duckdb``), validated."""
    store = os.environ.get(STORE_ENV, "duckdb")
    if store not in STORES:
        raise ValueError(f"{STORE_ENV} must be one of {STORES}, got {store!r}")
    return store


def default_location(root: str | Path, store: str | None = None) -> Path:
    """Where a runtime directory keeps its warehouse: the DuckDB file or the Parquet directory."""
    return Path(root) / ("warehouse.duckdb" if (store or configured_store()) == "duckdb" else "warehouse_parquet")
