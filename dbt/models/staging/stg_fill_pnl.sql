-- Per fill: what it did to the book (average cost, realized P&L net of fees), computed by
-- core.accounting.fill_pnl when the ledger was copied. Accounting lives in one place.
with src as (
  {{ tolerant_source('ledger', 'ledger_fill_pnl', [
      'fill_id varchar', 'client_order_id varchar', 'symbol varchar', 'side varchar', 'qty double',
      'price double', 'fees double', 'ts timestamp', 'signed_qty double', 'cash_flow double',
      'realized_pnl double', 'position_after double', 'avg_cost_after double'
  ]) }}
)
select *, {{ session_date('ts') }} as session_date from src
