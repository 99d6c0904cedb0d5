"""Market-data providers: plain clients (no Dagster) behind one protocol."""
