"""koprogo_node."""
