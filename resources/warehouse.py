"""The warehouse resource: the one seam every asset, check and sensor reads and writes through
(issue 15). The store is chosen by configuration; the assets only ever see a DuckDB connection,
so the stage functions are the same for every store.

* ``store="duckdb"`` (default): the DuckDB file at ``database``, exactly ``DuckDBResource``.
* ``store="parquet"``: the Parquet directory at ``database`` (``ais_pipelines/warehouse_store.py``),
  which several processes can write at once: symbol shards pass ``shard=k`` and write only their
  overlay; everything else is the main writer (the fan-in).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field


class WarehouseResource(DuckDBResource):
    """A ``DuckDBResource`` whose store can be swapped (assets keep their ``DuckDBResource`` hint)."""

    store: Literal["duckdb", "parquet"] = Field(
        default="duckdb",
        description="duckdb: one DuckDB file, one writing process at a time. parquet: a directory of Parquet "
        "files (one per table and writer) that symbol shards write concurrently.",
    )

    @contextmanager
    def get_connection(self, shard: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.store == "duckdb":
            with super().get_connection() as con:
                yield con
            return
        from ais_pipelines.warehouse_store import parquet_warehouse

        with parquet_warehouse(self.database, shard=shard) as con:
            yield con
