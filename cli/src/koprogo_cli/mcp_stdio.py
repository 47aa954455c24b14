"""`koprogo mcp`: the gateway's MCP tools over stdio, for desktop clients (Claude Desktop ...).

The same server as the gateway's `/mcp` endpoint (tools, prompts, resources), whose tools
call the running gateway's HTTP API at `KOPROGO_URL` (default http://127.0.0.1:8080) with
`KOPROGO_TOKEN`, else the dev token of `koprogo up`. The gateway checks scopes and copros;
its refusals reach the MCP client as tool errors. Standard output carries only the protocol.

Claude Desktop (`claude_desktop_config.json`):
    {"mcpServers": {"koprogo": {"command": "koprogo", "args": ["mcp"],
                                "env": {"KOPROGO_URL": "http://127.0.0.1:8080", "KOPROGO_TOKEN": "..."}}}}
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import datetime
from typing import Any

import httpx

from koprogo_cli.dev_auth import cli_token
from koprogo_cli.instance import DEFAULT_GATEWAY_URL, data_dir_of
from koprogo_gateway.entrypoints.mcp.backend import BackendRefusedError, KoproGoBackend
from koprogo_gateway.entrypoints.mcp.server import build_mcp_server

# A long document is many chat requests; one of them may wait for a busy node.
REQUEST_TIMEOUT_S = 300.0


class HttpBackend:
    """The tools' backend over the gateway's HTTP API."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendRefusedError(
                503, "gateway_unreachable", f"no answer from {self.client.base_url}: {type(exc).__name__}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": "http_error", "message": response.text[:300]}
        if response.status_code >= 400 or not isinstance(body, dict):
            raise BackendRefusedError(
                response.status_code, str(body.get("error", "http_error")), str(body.get("message", body))
            )
        return body

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/mcp/v1/chat", json=body)

    async def stats(
        self, copro_id: str | None, date_from: datetime | None, date_to: datetime | None
    ) -> dict[str, Any]:
        params = {
            key: value
            for key, value in (
                ("context", f"copro:{copro_id}" if copro_id else None),
                ("from", date_from.isoformat() if date_from else None),
                ("to", date_to.isoformat() if date_to else None),
            )
            if value is not None
        }
        return await self._json("GET", "/mcp/v1/stats", params=params)

    async def models(self) -> dict[str, Any]:
        return await self._json("GET", "/mcp/v1/models")


class FixedBackend:
    """Every request of the stdio session is served by one backend (one user, one token)."""

    def __init__(self, backend: KoproGoBackend) -> None:
        self.backend = backend

    def for_request(self, request: object | None) -> KoproGoBackend:
        return self.backend


async def serve_stdio(url: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        server = build_mcp_server(FixedBackend(HttpBackend(client)))
        await server.run_stdio_async()


def cmd_mcp(args: argparse.Namespace) -> int:
    asyncio.run(serve_stdio(args.url, cli_token(data_dir_of(args))))
    return 0


def add_mcp_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mcp = sub.add_parser(
        "mcp", help="serve the MCP tools over stdio (for Claude Desktop and other MCP clients)"
    )
    mcp.add_argument("--url", default=os.environ.get("KOPROGO_URL", DEFAULT_GATEWAY_URL), help="the gateway")
    mcp.add_argument("--data-dir", help="where `koprogo up` keeps the dev token (default ./data)")
    mcp.set_defaults(func=cmd_mcp)
