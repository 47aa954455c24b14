"""`koprogo-node --mcp`: the node's own Model Context Protocol server, at `/mcp` on the node port.

The same SDK and transport as the gateway's (official `mcp` SDK 2.x, streamable HTTP,
stateless), for the node's operator: `chat` answers from this node's model directly
(llama.cpp, tokenizer counts, grams by the node's declared footprint) and `node_status`
says what the node serves and declares. It is not the copro's chat path: nothing goes
through NATS or the ledger, no copro policy applies; copro users go through the gateway.

Access: with `NODE_MCP_TOKEN` set, `Authorization: Bearer <that token>` is required; without
it the node refuses to serve `/mcp` on anything but a loopback address.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from koprogo_node.adapters.inference import InferenceEngine
from koprogo_node.domain.controls import Sampling
from koprogo_node.domain.errors import NodeError
from koprogo_node.domain.generation import DEFAULT_TEMPERATURE
from koprogo_node.service_layer.inference import EdgeNode, NodeLoad
from koprogo_shared import co2
from koprogo_shared.events import ChatMessage

MCP_PATH = "/mcp"


def node_mcp(
    node: EdgeNode, engine: InferenceEngine, load: NodeLoad, host: str, token: str | None
) -> tuple[list[BaseRoute], AbstractAsyncContextManager[None]]:
    """The `/mcp` route and the session manager's lifespan (to run while the node serves)."""
    if token is None and not _loopback(host):
        raise NodeError(
            f"--mcp on {host}: set NODE_MCP_TOKEN (callers then send it as a bearer token), "
            "or keep the node port on a loopback address"
        )
    try:
        from mcp.server.mcpserver import MCPServer
    except ImportError:
        raise NodeError(
            "--mcp needs the MCP SDK: pip install 'koprogo-node[mcp]' (or 'mcp>=2.3,<3')"
        ) from None

    server: Any = MCPServer(
        "koprogo-node",
        instructions=f"KoproGo edge node {node.node_id}: answers with {node.model_id} on this machine.",
        version="0.1.0",
    )

    @server.tool()
    async def chat(
        prompt: str,
        system: str | None = None,
        max_tokens: int = 256,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> dict[str, Any]:
        """Answer `prompt` with this node's model (optionally after a `system` instruction)."""
        messages = [ChatMessage(role="system", content=system)] if system else []
        messages.append(ChatMessage(role="user", content=prompt))
        started = time.perf_counter()
        result = await engine.chat(messages, Sampling(temperature), max_tokens)
        seconds = time.perf_counter() - started
        load.rate.observe(result.completion_tokens, seconds)
        grams = co2.edge_grams(seconds, node.footprint)
        return {
            "model": node.model_id,
            "content": result.content,
            "finish_reason": result.finish_reason,
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.total_tokens,
            },
            "node_id": node.node_id,
            "latency_ms": round(seconds * 1000.0, 3),
            "co2_grams": grams,
        }

    @server.tool()
    async def node_status() -> dict[str, Any]:
        """What this node serves and declares: model, context, load, speed, power and grid intensity."""
        fp = node.footprint
        return {
            "node_id": node.node_id,
            "model": node.model_id,
            "model_loaded": engine.loaded,
            "context_length": engine.context_length,
            "in_flight": load.in_flight,
            "tokens_per_second": round(load.rate.value, 3),
            "power_watts": fp.power_watts,
            "intensity_g_per_kwh": fp.intensity_g_per_kwh,
            "renewable_attested": fp.renewable_attested,
        }

    sdk_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, stateless_http=True, json_response=True, host=host
    )
    route = Route(MCP_PATH, endpoint=_BearerGuard(sdk_app, token))
    lifespan: AbstractAsyncContextManager[None] = server.session_manager.run()
    return [route], lifespan


class _BearerGuard:
    """401 JSON unless the request carries the node's MCP token (when one is configured)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is not None and scope["type"] == "http":
            sent = dict(scope.get("headers", [])).get(b"authorization", b"")
            if not hmac.compare_digest(sent, self.expected):
                response = JSONResponse(
                    {"error": "unauthorized", "message": "this node's MCP token is required (Bearer)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
