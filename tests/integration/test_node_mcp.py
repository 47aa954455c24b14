"""`koprogo-node --mcp`: the node's own MCP tools, through the official MCP client, with real llama.cpp."""

from __future__ import annotations

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from koprogo_cli.ports import free_port
from koprogo_node.domain.errors import NodeError
from koprogo_node.entrypoints.mcp import node_mcp
from koprogo_node.service_layer.inference import EdgeNode, NodeLoad
from koprogo_shared import co2
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import wait_until
from tests.integration.edge_support import node_settings, running_node

pytestmark = pytest.mark.integration
TOKEN = "node-operator-token-" + "x" * 24


async def test_the_node_serves_chat_and_status_over_mcp_to_its_token_only(clean_jetstream: str) -> None:
    port = free_port()
    settings = node_settings(
        clean_jetstream, "mcp-node", ops_port=port, mcp_enabled=True, node_mcp_token=TOKEN
    )
    url = f"http://127.0.0.1:{port}"
    async with running_node(settings), httpx.AsyncClient(base_url=url, timeout=5) as client:

        async def ready() -> bool:
            try:
                return (await client.get("/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(ready, timeout=60)
        refused = await client.post("/mcp", json={}, headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http,
            streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = {t.name for t in (await session.list_tools()).tools}
            assert tools == {"chat", "node_status"}
            answer = await session.call_tool("chat", {"prompt": "Bonjour !", "max_tokens": 12})
            assert not answer.is_error, answer
            result = answer.structured_content
            assert result is not None
            assert result["model"] == BUNDLED_MODEL_ID and result["content"].strip()
            usage = result["usage"]
            assert 0 < usage["completion_tokens"] <= 12 and usage["prompt_tokens"] > 0
            assert result["co2_grams"] > 0  # the default footprint declares no renewable supply
            status = (await session.call_tool("node_status", {})).structured_content
            assert status is not None
            assert status["node_id"] == "mcp-node" and status["model_loaded"] is True
            assert status["tokens_per_second"] > 0  # the chat above was measured


def test_an_open_mcp_port_off_loopback_is_refused_without_a_token() -> None:
    node = EdgeNode("n", BUNDLED_MODEL_ID, co2.EdgeFootprint())
    with pytest.raises(NodeError, match="NODE_MCP_TOKEN"):
        node_mcp(node, engine=None, load=NodeLoad(), host="0.0.0.0", token=None)  # type: ignore[arg-type]
