"""koprogo_router."""
