-- Closing prices by symbol and session (the marks for positions and P&L).
with src as (
  {{ tolerant_source('warehouse', 'bars', [
      'symbol varchar', 'date timestamp', 'close double', 'adj_close double', 'asset_class varchar'
  ]) }}
)
select symbol, cast(date as date) as session_date, close, adj_close, asset_class
from src
