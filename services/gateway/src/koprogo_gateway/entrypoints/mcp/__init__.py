"""The Model Context Protocol server (streamable HTTP at /mcp, stdio through `koprogo mcp`)."""
