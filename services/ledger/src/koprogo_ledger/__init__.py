"""koprogo_ledger."""
