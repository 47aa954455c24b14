"""Grid scheduler for volunteer nodes. Empty until the grid issue is built."""
