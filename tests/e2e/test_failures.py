"""The whole path when parts of it fail: a node dies mid-answer, the ledger's tables are missing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.events import NodeHeartbeat
from tests.conftest import available_models, wait_until
from tests.e2e.conftest import RunningStack
from tests.e2e.test_chat_path import StackFactory, chat_body
from tests.integration.edge_support import node_process

# The bundled model ends about 1 free answer in 20 within 30 tokens (measured: seeds 0-199 of
# this prompt at temperature 0.7; seed 100 answers "Est-ce-ce?", 6 tokens, 0.44 s), often before
# the node's next heartbeat: the answer was then back with a 200 and no beat ever said the node
# was busy (CI: TimeoutError waiting for one). A schema whose one field holds at least this many
# characters keeps the model generating (the grammar allows no end before), whatever it samples;
# the seed is the one that answered in 6 tokens.
LONG_ANSWER = {
    "type": "json_schema",
    "json_schema": {
        "name": "etapes",
        "schema": {
            "type": "object",
            "properties": {"etapes": {"type": "string", "minLength": 1200}},
            "required": ["etapes"],
        },
    },
}


async def test_a_node_dying_mid_answer_with_no_other_node_is_a_quick_503_not_a_hang(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    stack = await stack_factory(edge_nodes=0, chat_timeout_s=120)
    nc = await nats.connect(stack.nats_url)
    generating = asyncio.Event()

    async def on_beat(msg: Any) -> None:
        if NodeHeartbeat.model_validate_json(msg.data).in_flight:
            generating.set()

    await nc.subscribe(subjects.node_heartbeat("edge-doomed"), cb=on_beat)
    try:
        async with node_process(stack.nats_url, "edge-doomed", tmp_path, HEARTBEAT_INTERVAL_S="0.5") as proc:
            await wait_until(lambda: _model_available(stack), timeout=60)
            body = chat_body(
                "Explique en détail, étape par étape, comment se déroule une assemblée générale."
            )
            answer = asyncio.create_task(
                stack.client.post(
                    "/mcp/v1/chat",
                    json=body | {"max_tokens": 1500, "response_format": LONG_ANSWER, "seed": 100},
                )
            )
            busy = asyncio.create_task(generating.wait())
            await asyncio.wait({answer, busy}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            busy.cancel()
            if answer.done():  # answered (or refused) before the node was seen generating
                done = answer.result()
                pytest.fail(f"answered before the node was killed: {done.status_code} {done.text}")
            assert generating.is_set(), "no heartbeat of edge-doomed said it was generating within 30 s"
            proc.kill()
            killed_at = time.monotonic()
            response = await asyncio.wait_for(answer, timeout=30)
    finally:
        await nc.close()
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "node_lost"
    assert "edge-doomed" in response.json()["message"]
    assert time.monotonic() - killed_at < 10  # three missed heartbeats, not the 120 s timeout


async def _model_available(stack: RunningStack) -> bool:
    return (await available_models(stack.client)).get(BUNDLED_MODEL_ID, False)


async def test_stats_before_the_ledger_made_its_tables_is_a_clear_503(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0)
    import asyncpg

    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute("ALTER TABLE mcp_responses RENAME TO mcp_responses_away")
        response = await stack.client.get("/mcp/v1/stats")
        assert response.status_code == 503
        assert response.json()["error"] == "stats_unavailable"
    finally:
        await conn.execute("ALTER TABLE mcp_responses_away RENAME TO mcp_responses")
        await conn.close()
