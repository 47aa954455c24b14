"""koprogo_cli."""
