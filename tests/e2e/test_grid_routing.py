"""Long `auto` chats go to the grid: gateway -> router -> `koprogo.work.grid.<model>` -> an edge node
that joined the grid (bundled model) -> the caller, the ledger and `/mcp/v1/stats`.

The router's thresholds are lowered so the bundled model (2048-token context) reads the long
chats quickly enough on a test box: the fixture's French minutes (2 873 characters) and a Dutch
notice written here (about 1 100).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from koprogo_node.settings import NodeSettings
from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.events import ChatCompleted, RoutingPlan, RoutingTarget
from koprogo_shared.grid_stores import declare_grid_stores
from koprogo_shared.nats_connection import ensure_streams
from koprogo_shared.publishing import publish_event
from tests.conftest import SECURED_NODES, SecuredNats, wait_until
from tests.e2e.conftest import published_subjects
from tests.e2e.test_chat_path import StackFactory
from tests.integration.edge_support import listening, run_inference, running_node
from tests.integration.nats_permissions_support import connected_as

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
MINUTES_FR = (FIXTURES / "pv-ag-2025-les-tilleuls.txt").read_text(encoding="utf-8")
NOTICE_NL = (
    "Residentie De Linde, Gent. Verslag van de algemene vergadering van 12 maart 2025. "
    "Aanwezig of vertegenwoordigd: 14 van de 18 eigenaars, samen 7 420 van de 10 000 aandelen. "
    "Punt 1: de rekeningen van 2024 worden goedgekeurd met 7 020 stemmen voor en 400 onthoudingen. "
    "Punt 2: de vervanging van de lift (offerte Schindler, 48 300,00 EUR btw inbegrepen) wordt "
    "goedgekeurd met een meerderheid van twee derden. Punt 3: de gevelrenovatie wordt besproken "
    "maar niet gestemd; de syndicus vraagt drie nieuwe offertes tegen de volgende vergadering. "
) * 2
COPRO = "3f6d2c1a-8b7e-4d5f-9a0b-1c2d3e4f5a6b"
MIN_PROMPT_CHARS = 1000
MIN_MAX_TOKENS = 48
# A long prompt on the bundled model takes ~20 s on a loaded 2-core box.
CHAT_TIMEOUT_S = 240.0


def chat(content: str, max_tokens: int = 24, **extra: Any) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": content}],
        "context": f"copro:{COPRO}",
        "max_tokens": max_tokens,
        **extra,
    }


async def answered(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/mcp/v1/chat", json=body, timeout=CHAT_TIMEOUT_S + 10)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["model"] == BUNDLED_MODEL_ID and answer["usage"]["prompt_tokens"] > 0
    return answer


async def test_long_auto_chats_run_on_the_grid_short_ones_on_the_edge_and_stats_count_both(
    stack_factory: StackFactory,
) -> None:
    assert len(MINUTES_FR) >= MIN_PROMPT_CHARS and len(NOTICE_NL) >= MIN_PROMPT_CHARS
    stack = await stack_factory(
        edge_nodes=1,
        grid=True,
        chat_timeout_s=CHAT_TIMEOUT_S,
        router_settings={"grid_min_prompt_chars": MIN_PROMPT_CHARS, "grid_min_max_tokens": MIN_MAX_TOKENS},
    )
    client = stack.client
    grid_work = subjects.run_inference_grid(BUNDLED_MODEL_ID)
    prompt = f"Résume ce procès-verbal en trois phrases.\n\n{MINUTES_FR}"
    async with published_subjects(stack) as seen:
        summary = await answered(client, chat(prompt))
    info = summary["execution_info"]
    assert info["execution_type"] == "grid" and info["node_id"] == "edge-test-0"
    assert info["routing"]["attempts"] == 1
    reason = info["routing"]["reason"]
    assert reason.startswith(
        f"prefer_edge, long chat (prompt of {len(prompt)} chars >= {MIN_PROMPT_CHARS})"
    ), reason
    assert "the grid before the interactive edge pools" in reason
    # The grid node's answer is measured as an edge node's: its power draw x time x intensity.
    assert info["co2_grams"] > 0 and info["latency_ms"] > 0
    assert grid_work in seen and not any(s.startswith("koprogo.work.edge.") for s in seen)

    dutch = await answered(client, chat(f"Vat dit verslag samen in twee zinnen.\n\n{NOTICE_NL}"))
    assert dutch["execution_info"]["execution_type"] == "grid"

    # A long answer asked for (max_tokens at the threshold) goes there too.
    letter = await answered(
        client, chat("Write a short letter inviting the owners to the next general meeting.", MIN_MAX_TOKENS)
    )
    assert letter["execution_info"]["execution_type"] == "grid"
    assert f"max_tokens {MIN_MAX_TOKENS} >= {MIN_MAX_TOKENS}" in letter["execution_info"]["routing"]["reason"]

    # Short chats keep to the interactive edge pool, on the same node.
    async with published_subjects(stack) as seen:
        short = await answered(client, chat("Quand a lieu la prochaine assemblée générale ?"))
    assert short["execution_info"]["execution_type"] == "edge"
    assert short["execution_info"]["routing"]["reason"].startswith("prefer_edge: ")
    # Routed by the gateway itself, stored once where the shared pool's nodes take it (the grid's
    # chats above are the router's: the gateway leaves a grid first target to it).
    routed = subjects.routed_edge_chat_requested(COPRO, subjects.SHARED_POOL, BUNDLED_MODEL_ID)
    assert routed in seen and grid_work not in seen

    # edge_only keeps even a long chat on the edge pools.
    private = await answered(client, chat(NOTICE_NL, routing={"policy": "edge_only"}))
    assert private["execution_info"]["execution_type"] == "edge"
    # An explicit model id is the caller's choice: never the grid.
    explicit = await answered(client, {**chat(NOTICE_NL), "model": BUNDLED_MODEL_ID})
    assert explicit["execution_info"]["execution_type"] == "edge"

    async def counted() -> bool:
        stats = (await client.get("/mcp/v1/stats", params={"context": f"copro:{COPRO}"})).json()
        return (stats["grid_requests"], stats["edge_requests"], stats["cloud_requests"]) == (3, 3, 0)

    await wait_until(counted, timeout=20)
    stats = (await client.get("/mcp/v1/stats", params={"context": f"copro:{COPRO}"})).json()
    assert stats["total_requests"] == 6
    grid_tokens = sum(a["usage"]["total_tokens"] for a in (summary, dutch, letter))
    edge_tokens = sum(a["usage"]["total_tokens"] for a in (short, private, explicit))
    assert stats["total_tokens"] == grid_tokens + edge_tokens


async def test_a_grid_node_holding_a_key_pulls_the_grids_chats_and_answers_them_as_grid(
    secured_nats: SecuredNats,
) -> None:
    """On a server that knows every key (as `koprogo up` writes it): the router's key may send grid
    work, a shared-pool node's key (pi-1) may create and pull `grid-<model>`, and its answer says grid."""
    model = SECURED_NODES["pi-1"][0]
    async with connected_as(secured_nats, "admin") as admin:
        await ensure_streams(admin.js)
        await declare_grid_stores(admin.js)
    settings = NodeSettings(
        nats_url=secured_nats.url,
        nats_nkey_seed_file=secured_nats.seed_files["node:pi-1"],
        node_id="pi-1",
        node_model=model,
        ops_port=0,
        grid_enabled=True,
        heartbeat_interval_s=0.5,
    )
    reply = subjects.gateway_reply(f"gw-grid-{uuid.uuid4().hex[:8]}")
    work = run_inference(
        f"Vat dit verslag samen in één zin.\n\n{NOTICE_NL}", reply_subject=reply, max_tokens=16
    )
    plan = RoutingPlan(
        policy="prefer_edge",
        allow_fallback=True,
        reason="prefer_edge, long chat: test",
        targets=[RoutingTarget(kind="grid", model=model), RoutingTarget(kind="edge", model=model)],
    )
    work = work.model_copy(update={"model": model, "routing": plan})
    async with (
        connected_as(secured_nats, "admin") as admin,
        connected_as(secured_nats, "router") as router,
        listening(router.nc, subjects.node_heartbeat("pi-1"), "heartbeat") as beats,
        # The gateway hears node replies; the operator's key stands in for it here.
        listening(admin.nc, subjects.node_reply(reply, "pi-1"), "outcome") as replies,
        running_node(settings),
    ):
        beat = await beats.next(120)
        assert beat.task_types  # it joined the grid
        await publish_event(router.js, subjects.run_inference_grid(model), work)
        answer = await replies.next(CHAT_TIMEOUT_S)
        assert isinstance(answer, ChatCompleted), answer
        assert answer.execution_info.execution_type == "grid" and answer.execution_info.node_id == "pi-1"
        assert answer.usage.prompt_tokens > 0
        info = await admin.js.consumer_info(subjects.WORK_STREAM, subjects.grid_work_durable(model))
        assert info.config.filter_subject == subjects.run_inference_grid(model)
    assert router.refusals.errors.empty()
