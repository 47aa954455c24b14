"""`koprogo mcp`: the gateway's MCP server over stdio, for desktop clients (Claude Desktop ...).

A proxy: every tools, prompts and resources request of the stdio client is forwarded to the
running gateway's MCP endpoint (`KOPROGO_URL/mcp`, default http://127.0.0.1:8080/mcp, over
streamable HTTP) with `KOPROGO_TOKEN`, else the dev token of `koprogo up`, and its answer
comes back as it is; the tools, prompts and resources are defined once, in the gateway, which
also checks scopes and copros. Each request opens its own short session, so a gateway that
starts (or restarts) after `koprogo mcp` is found. An unreachable gateway or a refused token
reaches the MCP client as a tool error (an MCP error for prompts and resources) saying so and
what to do. Standard output carries only the protocol.

Claude Desktop (`claude_desktop_config.json`):
    {"mcpServers": {"koprogo": {"command": "koprogo", "args": ["mcp"],
                                "env": {"KOPROGO_URL": "http://127.0.0.1:8080", "KOPROGO_TOKEN": "..."}}}}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx2
from mcp import ClientSession, MCPError, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from pydantic import BaseModel

from koprogo_cli.client_commands import start_advice, token_advice
from koprogo_cli.dev_auth import cli_token
from koprogo_cli.instance import DEFAULT_GATEWAY_URL, data_dir_of
from koprogo_cli.invocation import installed_version

# A long document is many chat requests; one of them may wait for a busy node.
REQUEST_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 10.0
# The gateway's instructions are asked for once at start, and not waited for long.
INSTRUCTIONS_TIMEOUT_S = 5.0
MCP_PATH = "/mcp"

ResultT = TypeVar("ResultT", bound=BaseModel)


class GatewayUnavailableError(Exception):
    """The gateway's MCP endpoint could not be reached, or refused the connection (its token)."""


class GatewayMcp:
    """The gateway's MCP endpoint as a client sees it: one short session per forwarded request."""

    def __init__(self, url: str, token: str | None, token_advice: Callable[[], str]) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._token_advice = token_advice

    @asynccontextmanager
    async def session(self, timeout_s: float = REQUEST_TIMEOUT_S) -> AsyncIterator[ClientSession]:
        """An initialized session with the gateway.

        Raises GatewayUnavailableError when the gateway cannot be reached or refuses the HTTP
        request itself (a 401 for the token); the gateway's MCP errors are raised as they came.
        """
        refusals: list[str] = []

        async def remember_refusal(response: httpx2.Response) -> None:
            # The SDK reports an HTTP refusal that is not a JSON-RPC error as a bare "Server
            # returned an error response": keep the gateway's own words (why the token was refused).
            if response.status_code >= 400:
                await response.aread()
                if (refusal := self._refusal(response.status_code, response.text)) is not None:
                    refusals.append(refusal)

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = httpx2.Timeout(CONNECT_TIMEOUT_S, read=timeout_s)
        try:
            async with (
                httpx2.AsyncClient(
                    headers=headers, timeout=timeout, event_hooks={"response": [remember_refusal]}
                ) as http,
                streamable_http_client(self.url + MCP_PATH, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                yield session
        except Exception as exc:
            # The SDK's task groups wrap what went wrong in exception groups: take it out.
            cause = _sole_cause(exc)
            if isinstance(cause, httpx2.HTTPError):
                raise GatewayUnavailableError(self._unreachable(cause)) from None
            if isinstance(cause, MCPError) and refusals:
                raise GatewayUnavailableError(refusals[-1]) from None
            raise cause from None

    async def forward(self, request: Any, result_type: type[ResultT]) -> ResultT:
        """Send `request` to the gateway and return its result; its MCP errors are raised as they came."""
        async with self.session() as session:
            return await session.send_request(request, result_type)

    async def instructions(self) -> str | None:
        """What the gateway's MCP server tells clients about itself (None when it is not up yet)."""
        try:
            async with asyncio.timeout(INSTRUCTIONS_TIMEOUT_S):
                async with self.session(INSTRUCTIONS_TIMEOUT_S) as session:
                    initialized = session.initialize_result
                    return initialized.instructions if initialized else None
        except (GatewayUnavailableError, MCPError, TimeoutError) as exc:
            reason = str(exc) or "no answer in time"
            print(f"koprogo mcp: {reason}; each request tries again", file=sys.stderr)
            return None

    def _refusal(self, status: int, body: str) -> str | None:
        """The gateway's own refusal of an HTTP request (None for a JSON-RPC error, the SDK reports those)."""
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "jsonrpc" in parsed:
            return None
        if isinstance(parsed, dict) and "error" in parsed:
            error, message = str(parsed["error"]), str(parsed.get("message", ""))
        else:
            error, message = "http_error", body[:300]
        advice = f" — {self._token_advice()}" if status == 401 else ""
        return f"the gateway at {self.url} refused: {error} ({status}): {message}{advice}"

    def _unreachable(self, exc: BaseException) -> str:
        return f"gateway unreachable at {self.url}: {exc or type(exc).__name__}{start_advice(self.url)}"


def _sole_cause(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups, or `exc` itself when there are several."""
    leaves: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    return leaves[0] if len(leaves) == 1 else exc


def build_proxy(gateway: GatewayMcp, instructions: str | None) -> Server[Any]:
    """A stdio-side MCP server whose every tools, prompts and resources request is the gateway's."""

    async def unavailable_as_mcp_error(request: Any, result_type: type[ResultT]) -> ResultT:
        try:
            return await gateway.forward(request, result_type)
        except GatewayUnavailableError as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from None

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return await unavailable_as_mcp_error(types.ListToolsRequest(params=params), types.ListToolsResult)

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            return await gateway.forward(types.CallToolRequest(params=params), types.CallToolResult)
        except GatewayUnavailableError as exc:
            return types.CallToolResult(content=[types.TextContent(text=str(exc))], is_error=True)

    async def list_prompts(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        return await unavailable_as_mcp_error(
            types.ListPromptsRequest(params=params), types.ListPromptsResult
        )

    async def get_prompt(
        ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        return await unavailable_as_mcp_error(types.GetPromptRequest(params=params), types.GetPromptResult)

    async def list_resources(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return await unavailable_as_mcp_error(
            types.ListResourcesRequest(params=params), types.ListResourcesResult
        )

    async def list_resource_templates(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return await unavailable_as_mcp_error(
            types.ListResourceTemplatesRequest(params=params), types.ListResourceTemplatesResult
        )

    async def read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return await unavailable_as_mcp_error(
            types.ReadResourceRequest(params=params), types.ReadResourceResult
        )

    return Server(
        "koprogo-symbiose",
        version=installed_version(),
        instructions=instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
    )


async def serve_stdio(gateway: GatewayMcp) -> None:
    server = build_proxy(gateway, await gateway.instructions())
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def cmd_mcp(args: argparse.Namespace) -> int:
    token = cli_token(data_dir_of(args))
    asyncio.run(serve_stdio(GatewayMcp(args.url, token, lambda: token_advice(args))))
    return 0


def add_mcp_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mcp = sub.add_parser(
        "mcp", help="serve the gateway's MCP tools over stdio (for Claude Desktop and other MCP clients)"
    )
    mcp.add_argument("--url", default=os.environ.get("KOPROGO_URL", DEFAULT_GATEWAY_URL), help="the gateway")
    mcp.add_argument("--data-dir", help="where `koprogo up` keeps the dev token (default ./data)")
    mcp.set_defaults(func=cmd_mcp)
