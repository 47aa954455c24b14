"""The gateway's Model Context Protocol server, driven by the official MCP client: over
streamable HTTP at /mcp and over stdio through `koprogo mcp`, on the real stack."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from koprogo_cli.ports import free_port
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack
from tests.token_support import AUTH_SETTINGS, bearer, token

StackFactory = Callable[..., Awaitable[RunningStack]]

COPRO = "6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6b"
OTHER_COPRO = "0a0b0c0d-1111-2222-3333-444455556666"
MINUTES = Path("/work/shared/fixtures/pv-ag-2025-les-tilleuls.txt")
TOOLS = {
    "chat",
    "ocr_invoice",
    "predict_expenses",
    "summarize_meeting",
    "translate_document",
    "get_task",
    "get_stats",
    "list_models",
}
PROMPTS = {"resumer_pv", "traduire", "calculer_charges"}


@asynccontextmanager
async def mcp_session(stack: RunningStack, bearer_token: str) -> AsyncIterator[ClientSession]:
    timeout = httpx2.Timeout(30.0, read=300.0)
    async with (
        httpx2.AsyncClient(headers=bearer(bearer_token), timeout=timeout) as http,
        streamable_http_client(f"{stack.gateway_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def responses_of(stack: RunningStack, copro_id: str) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return int(
            await conn.fetchval(
                # What the stats count: stored and delivered (its ChatDelivered projected).
                "SELECT count(*) FROM mcp_responses WHERE copro_id::text = $1 AND delivered_at IS NOT NULL",
                copro_id,
            )
        )
    finally:
        await conn.close()


@pytest.fixture
def minutes() -> str:
    return MINUTES.read_text(encoding="utf-8")


async def test_an_mcp_client_lists_tools_prompts_chats_and_summarises_minutes_on_the_grid(
    stack_factory: StackFactory, minutes: str
) -> None:
    resident = token(user="resident-1", copros=[COPRO])
    stack = await stack_factory(grid=True, probe_token=resident, **AUTH_SETTINGS)
    async with mcp_session(stack, resident) as session:
        assert {t.name for t in (await session.list_tools()).tools} == TOOLS
        prompts = (await session.list_prompts()).prompts
        assert {p.name for p in prompts} == PROMPTS
        assert {p.title for p in prompts} == {"Résumer un PV", "Traduire", "Calculer les charges"}
        share = await session.get_prompt("calculer_charges", {"montant": "1 200,00", "quotites": "250"})
        assert "30.00 €" in str(share.messages[0].content)

        said = structured(
            await session.call_tool(
                "chat",
                {
                    "messages": [{"role": "user", "content": "Bonjour !"}],
                    "model": BUNDLED_MODEL_ID,
                    "copro_id": COPRO,
                    "max_tokens": 8,
                },
            )
        )
        assert said["content"].strip()
        assert said["execution_info"]["execution_type"] == "edge"
        assert 0 < said["usage"]["completion_tokens"] <= 8

        # A summary is a grid task: submitted, run by a node, returned as GET /mcp/v1/tasks/{id}.
        summary = structured(
            await session.call_tool("summarize_meeting", {"text": minutes, "copro_id": COPRO})
        )
        if summary["status"] != "completed":
            # Not ended within the tool's bounded wait (a busy 2-core box): get_task follows it.
            assert summary["status"] in ("pending", "assigned", "running"), summary
            task_id = summary["id"]

            async def summarised() -> bool:
                nonlocal summary
                summary = structured(await session.call_tool("get_task", {"task_id": task_id}))
                return bool(summary["status"] == "completed")

            await wait_until(summarised, timeout=480, interval=2)
        assert summary["task_type"] == "summarize_meeting" and summary["execution_type"] == "grid"
        assert summary["attempts"][-1]["node_id"] == "edge-test-0"
        decisions = json.dumps(summary["result"]["decisions"], ensure_ascii=False)
        for amount in ("18 450", "10 324,50", "49 500"):
            assert amount in decisions, amount
        assert summary["result"]["summary"].strip()

        # One chat answered on the edge, one task run on the grid.
        await wait_until(lambda: _equals(responses_of(stack, COPRO), 1), timeout=30)

        async def both_counted() -> bool:
            stats = structured(await session.call_tool("get_stats", {"copro_id": COPRO}))
            return bool(stats["total_requests"] == 2 and stats["grid_requests"] == 1)

        await wait_until(both_counted, timeout=30)
        resource = await session.read_resource(f"koprogo://copros/{COPRO}/stats")
        figures = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
        assert figures["total_requests"] == 2 and figures["grid_requests"] == 1


async def _equals(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def test_mcp_tools_keep_the_http_apis_scopes_and_copros(stack_factory: StackFactory) -> None:
    reader = token(user="reader-1", copros=[COPRO], scopes=("mcp:read",))
    stack = await stack_factory(probe_token=reader, **AUTH_SETTINGS)
    async with mcp_session(stack, reader) as session:
        refused = await session.call_tool("summarize_meeting", {"text": "Le PV.", "copro_id": COPRO})
        assert "forbidden (403)" in error_text(refused)
        assert "mcp:write" in error_text(refused)
        models = structured(await session.call_tool("list_models", {}))
        assert any(m["id"] == BUNDLED_MODEL_ID and m["is_available"] for m in models["models"])
        other = await session.call_tool("get_stats", {"copro_id": OTHER_COPRO})
        assert "not_found (404)" in error_text(other)
        with pytest.raises(MCPError):
            await session.read_resource(f"koprogo://copros/{OTHER_COPRO}/stats")
    writer = token(user="writer-1", copros=[COPRO], scopes=("mcp:write",))
    async with mcp_session(stack, writer) as session:
        elsewhere = await session.call_tool("chat", {"prompt": "Bonjour", "copro_id": OTHER_COPRO})
        assert "forbidden (403)" in error_text(elsewhere)
        no_stats = await session.call_tool("get_stats", {"copro_id": COPRO})
        assert "mcp:read" in error_text(no_stats)
    assert await responses_of(stack, COPRO) == 0


async def test_the_mcp_endpoint_answers_401_json_without_a_valid_token(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    for headers in ({}, bearer("not-a-jwt"), bearer(token(secret="another-secret-" + "y" * 40))):
        refused = await stack.client.post("/mcp", json=initialize, headers=accept | headers)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    # The HTTP API under /mcp/v1 keeps its own routes and errors.
    assert (await stack.client.get("/mcp/v1/chat")).status_code == 405


@asynccontextmanager
async def stdio_session(gateway_url: str, bearer_token: str) -> AsyncIterator[ClientSession]:
    """`koprogo mcp` as Claude Desktop starts it: a child process speaking MCP on its stdio."""
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "koprogo_cli.main", "mcp"],
        env={"KOPROGO_URL": gateway_url, "KOPROGO_TOKEN": bearer_token},
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def test_koprogo_mcp_serves_the_gateways_own_tools_prompts_and_resources_over_stdio(
    stack_factory: StackFactory,
) -> None:
    resident = token(user="resident-2", copros=[COPRO])
    stack = await stack_factory(probe_token=resident, **AUTH_SETTINGS)
    async with (
        mcp_session(stack, resident) as over_http,
        stdio_session(stack.gateway_url, resident) as session,
    ):
        # Defined once, in the gateway: stdio lists exactly what /mcp lists.
        tools = (await session.list_tools()).tools
        assert {t.name for t in tools} == TOOLS
        assert tools == (await over_http.list_tools()).tools
        assert (await session.list_prompts()).prompts == (await over_http.list_prompts()).prompts
        templates = (await session.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["koprogo://copros/{copro_id}/stats"]
        assert templates == (await over_http.list_resource_templates()).resource_templates
        instructions = session.initialize_result.instructions if session.initialize_result else None
        assert instructions and "copro_id" in instructions
        assert over_http.initialize_result is not None
        assert instructions == over_http.initialize_result.instructions

        share = await session.get_prompt("calculer_charges", {"montant": "1 200,00", "quotites": "250"})
        assert "30.00 €" in str(share.messages[0].content)
        models = structured(await session.call_tool("list_models", {}))
        assert any(m["id"] == BUNDLED_MODEL_ID and m["is_available"] for m in models["models"])
        elsewhere = await session.call_tool("get_stats", {"copro_id": OTHER_COPRO})
        assert "not_found (404)" in error_text(elsewhere)
        said = structured(
            await session.call_tool("chat", {"prompt": "Bonjour !", "copro_id": COPRO, "max_tokens": 8})
        )
        assert said["content"].strip()
        assert said["model"] == BUNDLED_MODEL_ID

        await wait_until(lambda: _equals(responses_of(stack, COPRO), 1), timeout=30)
        resource = await session.read_resource(f"koprogo://copros/{COPRO}/stats")
        assert json.loads(resource.contents[0].text)["total_requests"] == 1  # type: ignore[union-attr]
        with pytest.raises(MCPError):
            await session.read_resource(f"koprogo://copros/{OTHER_COPRO}/stats")


async def test_koprogo_mcp_says_when_the_gateway_refuses_its_token_or_is_not_up(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    async with stdio_session(stack.gateway_url, "not-a-jwt") as session:
        refused = error_text(await session.call_tool("list_models", {}))
        assert f"the gateway at {stack.gateway_url} refused: unauthorized (401)" in refused
        assert "the token in KOPROGO_TOKEN was refused" in refused
        with pytest.raises(MCPError, match=r"unauthorized \(401\)"):
            await session.list_tools()

    port = free_port()
    async with stdio_session(f"http://127.0.0.1:{port}", token(copros=[COPRO])) as session:
        down = error_text(await session.call_tool("chat", {"prompt": "Bonjour", "copro_id": COPRO}))
        assert f"gateway unreachable at http://127.0.0.1:{port}" in down
        assert f"up --port {port}` starts it" in down
        with pytest.raises(MCPError, match="gateway unreachable"):
            await session.list_prompts()
