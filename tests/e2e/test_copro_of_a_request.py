"""A member's request runs under the policy, quota and figures of the copro it is for, whether it
names it in `context` or leaves it out (issue 11, finding 6).

A copro's `edge_only` used to be escaped by leaving `context` out: the request then ran under the
deployment's default policy, in the cloud. The cloud here is a real OpenAI-compatible server
(llama.cpp's, serving the bundled model under the cloud name `gpt-4o-mini`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats

from koprogo_shared.events import ChatRequested
from koprogo_shared.subjects import CHAT_REQUESTED_ALL
from tests.conftest import available_models, wait_until
from tests.e2e.conftest import RunningStack
from tests.e2e.test_carbon_routing import CLOUD_MODEL, cloud_server, deployment
from tests.token_support import AUTH_SETTINGS, bearer, token

__all__ = ["cloud_server"]  # a fixture, used by name

StackFactory = Callable[..., Awaitable[RunningStack]]


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": CLOUD_MODEL,
        "messages": [{"role": "user", "content": "Résume le PV de l'assemblée générale en une phrase."}],
        "max_tokens": 8,
        **extra,
    }


async def cloud_available(client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    return (await available_models(client, headers)).get(CLOUD_MODEL, False)


async def test_a_member_who_leaves_out_context_runs_under_the_copros_edge_only_policy(
    stack_factory: StackFactory, cloud_server: int, tmp_path: Path
) -> None:
    file = tmp_path / "deployments.toml"
    file.write_text(deployment("local-openai", f"http://127.0.0.1:{cloud_server}/v1"))
    stack = await stack_factory(edge_nodes=0, cloud_deployments_file=file, **AUTH_SETTINGS)
    client = stack.client
    copro = str(uuid.uuid4())
    admin = bearer(token(user=str(uuid.uuid4()), scopes=("mcp:admin",)))
    member = bearer(token(user=str(uuid.uuid4()), copros=[copro]))
    await wait_until(lambda: cloud_available(client, admin), timeout=30)

    # Without a policy the member's request runs in the cloud: the cloud is really there.
    before = await client.post("/mcp/v1/chat", json=chat(), headers=member)
    assert before.status_code == 200, before.text
    assert before.json()["execution_info"]["execution_type"] == "cloud"

    stored = await client.put(f"/mcp/v1/copros/{copro}/routing", json={"policy": "edge_only"}, headers=admin)
    assert stored.status_code == 200, stored.text

    async def named_is_refused() -> bool:
        named = await client.post("/mcp/v1/chat", json=chat(context=f"copro:{copro}"), headers=member)
        return named.status_code == 503

    await wait_until(named_is_refused, timeout=10)  # the router has heard the policy

    nc = await nats.connect(stack.nats_url)
    requested: asyncio.Queue[ChatRequested] = asyncio.Queue()

    async def record(msg: Any) -> None:
        await requested.put(ChatRequested.model_validate_json(msg.data))

    await nc.subscribe(CHAT_REQUESTED_ALL, cb=record)
    await nc.flush()
    try:
        unnamed = await client.post("/mcp/v1/chat", json=chat(), headers=member)
        published = await asyncio.wait_for(requested.get(), timeout=5)
    finally:
        await nc.close()
    assert unnamed.status_code == 503, unnamed.text
    assert unnamed.json()["error"] == "no_target_available"
    assert "edge_only" in unnamed.json()["message"]
    assert published.copro_id == copro  # its quota and figures are the copro's too

    # A token naming two copros must say which: nothing is published, whatever the policies.
    two = bearer(token(user=str(uuid.uuid4()), copros=[copro, str(uuid.uuid4())]))
    ambiguous = await client.post("/mcp/v1/chat", json=chat(), headers=two)
    assert ambiguous.status_code == 422, ambiguous.text
    assert "several copros" in ambiguous.json()["message"]

    # A token naming no copro (an operator's) runs with none, under the deployment's default.
    operator = await client.post("/mcp/v1/chat", json=chat(), headers=admin)
    assert operator.status_code == 200, operator.text
    assert operator.json()["execution_info"]["execution_type"] == "cloud"
