"""koprogo_gateway."""
