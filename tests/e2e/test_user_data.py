"""GDPR: a user exports and erases their own stored chats (an admin anyone's); another user's
data is a 404; an open gateway (no authentication) refuses both."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import nats
import pytest
from nats.js.errors import NotFoundError

from koprogo_shared import subjects
from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack
from tests.e2e.test_authentication import COPRO, READ_WRITE, chat_body
from tests.token_support import AUTH_SETTINGS, bearer, token

StackFactory = Callable[..., Awaitable[RunningStack]]


async def _export(stack: RunningStack, user: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await stack.client.get(f"/mcp/v1/users/{user}/data", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _stats(stack: RunningStack, headers: dict[str, str]) -> dict[str, Any]:
    response = await stack.client.get("/mcp/v1/stats", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_users_export_and_erase_their_own_data_and_admins_anyones(stack_factory: StackFactory) -> None:
    resident_id, neighbour_id = str(uuid.uuid4()), str(uuid.uuid4())
    stack = await stack_factory(
        probe_token=token(user=resident_id, copros=[COPRO], scopes=("mcp:read",)), grid=True, **AUTH_SETTINGS
    )
    resident = bearer(token(user=resident_id, copros=[COPRO], scopes=READ_WRITE))
    neighbour = bearer(token(user=neighbour_id, copros=[COPRO], scopes=READ_WRITE))
    admin = bearer(token(user=str(uuid.uuid4()), scopes=("mcp:admin",)))
    body = chat_body()
    answers = []
    for headers in (resident, neighbour):
        chat = await stack.client.post("/mcp/v1/chat", json=body, headers=headers)
        assert chat.status_code == 200, chat.text
        answers.append(chat.json())
    await wait_until(lambda: _delivered(stack, 2), timeout=15)
    # A grid task of the resident's: exported with what they sent and got, erased with the rest.
    history = [{"month": f"2024-{m:02d}", "category": "nettoyage", "amount": 500 + m} for m in range(1, 13)]
    submitted = await stack.client.post(
        "/mcp/v1/execute",
        json={"task_type": "predict_expenses", "input_data": {"history": history}, "copro_id": COPRO},
        headers=resident,
    )
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["id"]

    async def task_done() -> bool:
        tasks = (await _export(stack, resident_id, resident))["tasks"]
        return bool(tasks) and tasks[0]["status"] == "completed"

    # One owner on this stack: the result is taken unchecked after GRID_OWNER_WAIT_S (10 s); poll
    # once a second, within the per-user rate limit (100 requests a minute).
    await wait_until(task_done, timeout=60, interval=1.0)

    mine = await _export(stack, resident_id, resident)
    assert mine["user_id"] == resident_id
    [task] = mine["tasks"]
    assert task["id"] == task_id and task["input_data"]["parameters"]["history"] == history
    assert task["result"]["categories"]["nettoyage"]["forecast"]
    [request] = mine["requests"]
    assert request["messages"] == body["messages"] and request["contents_status"] == "available"
    assert request["model"] == body["model"] and request["context"] == body["context"]
    assert request["contents_purged_at"] is None
    assert request["response"]["content"] == answers[0]["content"]
    assert request["response"]["usage"] == answers[0]["usage"]
    assert request["response"]["execution_info"]["execution_type"] == "edge"

    # Another user's data does not exist, as far as a resident can tell; an admin sees it.
    theirs = await stack.client.get(f"/mcp/v1/users/{neighbour_id}/data", headers=resident)
    assert theirs.status_code == 404 and theirs.json()["error"] == "not_found"
    erase_theirs = await stack.client.delete(f"/mcp/v1/users/{neighbour_id}/data", headers=resident)
    assert erase_theirs.status_code == 404
    assert (await _export(stack, neighbour_id, admin))["requests"][0]["messages"] == body["messages"]

    # A row that no longer opens is reported as unavailable, the rest of the export stands.
    await _tamper_response(stack, neighbour_id)
    [tampered] = (await _export(stack, neighbour_id, neighbour))["requests"]
    assert tampered["messages"] == body["messages"]
    assert tampered["response"]["content"] is None
    assert tampered["response"]["contents_status"] == "unavailable"

    before = await _stats(stack, admin)
    erased = await stack.client.delete(f"/mcp/v1/users/{resident_id}/data", headers=resident)
    assert erased.status_code == 202, erased.text
    assert erased.json()["status"] == "accepted" and erased.json()["request_id"]
    assert erased.json()["requests"] == 1 and erased.json()["tasks"] == 1
    by_admin = await stack.client.delete(f"/mcp/v1/users/{neighbour_id}/data", headers=admin)
    assert by_admin.status_code == 202, by_admin.text

    async def purged(user: str) -> bool:
        requests = (await _export(stack, user, admin))["requests"]
        return all(r["contents_purged_at"] and r["response"]["contents_purged_at"] for r in requests)

    await wait_until(lambda: purged(resident_id), timeout=15)
    await wait_until(lambda: purged(neighbour_id), timeout=15)
    for user, headers in ((resident_id, resident), (neighbour_id, neighbour)):
        [gone] = (await _export(stack, user, headers))["requests"]
        assert gone["messages"] is None and gone["contents_status"] == "purged"
        assert gone["response"]["content"] is None and gone["response"]["contents_status"] == "purged"
        assert gone["response"]["usage"] == answers[0 if user == resident_id else 1]["usage"]
    assert await _stats(stack, admin) == before
    assert await _ciphertexts_left(stack) == 0
    [erased_task] = (await _export(stack, resident_id, resident))["tasks"]
    assert erased_task["input_data"] is None and erased_task["result"] is None
    assert erased_task["contents_status"] == "purged" and erased_task["status"] == "completed"


async def test_an_open_gateway_neither_exports_nor_erases(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0)
    user = str(uuid.uuid4())
    for method in ("GET", "DELETE"):
        response = await stack.client.request(method, f"/mcp/v1/users/{user}/data")
        assert response.status_code == 403, (method, response.text)
        assert response.json() == {"error": "forbidden", "message": "authentication is not configured"}


ANY_SHAPE = ["dev-user", "alice", "alice.martin@example.be", str(uuid.uuid4())]


async def test_users_of_any_id_shape_export_and_erase_their_own_data(stack_factory: StackFactory) -> None:
    """The dev token's `dev-user`, `koprogo token --user alice`, an identity provider's e-mail, a UUID."""
    stack = await stack_factory(
        probe_token=token(user=ANY_SHAPE[0], copros=[COPRO], scopes=("mcp:read",)), **AUTH_SETTINGS
    )
    users = {user: bearer(token(user=user, copros=[COPRO], scopes=READ_WRITE)) for user in ANY_SHAPE}
    body = chat_body()
    answers = {}
    for user, headers in users.items():
        chat = await stack.client.post("/mcp/v1/chat", json=body, headers=headers)
        assert chat.status_code == 200, chat.text
        answers[user] = chat.json()
    await wait_until(lambda: _delivered(stack, len(users)), timeout=30)

    for user, headers in users.items():
        [request] = (await _export(stack, user, headers))["requests"]
        assert request["messages"] == body["messages"] and request["contents_status"] == "available", user
        assert request["response"]["content"] == answers[user]["content"], user

    erased: list[str] = []
    for user, headers in users.items():
        erasure = await stack.client.delete(f"/mcp/v1/users/{user}/data", headers=headers)
        assert erasure.status_code == 202, erasure.text
        assert erasure.json()["status"] == "accepted" and erasure.json()["requests"] == 1
        erased.append(user)
        await wait_until(lambda user=user: _all_purged(stack, user, users[user]), timeout=15, interval=0.25)
        for other, other_headers in users.items():
            [request] = (await _export(stack, other, other_headers))["requests"]
            assert (request["contents_status"] == "purged") == (other in erased), (user, other)
            assert request["response"]["usage"] == answers[other]["usage"]
    assert await _ciphertexts_left(stack) == 0


async def test_an_erasure_the_ledger_could_not_perform_is_refused_not_accepted(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    alice = bearer(token(user="alice", copros=[COPRO], scopes=READ_WRITE))
    admin = bearer(token(user=str(uuid.uuid4()), scopes=("mcp:admin",)))
    # An id PostgreSQL cannot hold as text (a NUL) is refused before anything is published.
    unstorable = await stack.client.delete("/mcp/v1/users/al%00ice/data", headers=admin)
    assert unstorable.status_code == 422, unstorable.text
    # A ledger whose schema predates text user ids could only erase UUID users: an error, never a 202.
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute("ALTER TABLE mcp_requests DROP COLUMN user_ref")
        refused = await stack.client.delete("/mcp/v1/users/alice/data", headers=alice)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "data_unavailable"
    finally:
        await conn.close()
    nc = await nats.connect(stack.nats_url)
    try:
        with pytest.raises(NotFoundError):  # nothing was put on the bus for the ledger
            await nc.jetstream().get_last_msg(
                subjects.EVENTS_STREAM, subjects.user_erasure_requested("alice")
            )
    finally:
        await nc.close()


async def _all_purged(stack: RunningStack, user: str, headers: dict[str, str]) -> bool:
    requests = (await _export(stack, user, headers))["requests"]
    return all(r["contents_purged_at"] and r["response"]["contents_purged_at"] for r in requests)


async def _delivered(stack: RunningStack, responses: int) -> bool:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT count(*) = $1 FROM mcp_responses WHERE execution_info ? 'inference_ms'",
                responses,
            )
        )
    finally:
        await conn.close()


async def _tamper_response(stack: RunningStack, user: str) -> None:
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute(
            "UPDATE mcp_responses AS r SET content_ciphertext = set_byte(content_ciphertext, 20,"
            " get_byte(content_ciphertext, 20) # 1) FROM mcp_requests AS q"
            " WHERE r.request_id = q.id AND q.user_id = $1",
            uuid.UUID(user),
        )
    finally:
        await conn.close()


async def _ciphertexts_left(stack: RunningStack) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT (SELECT count(*) FROM mcp_requests WHERE messages_ciphertext IS NOT NULL)"
                " + (SELECT count(*) FROM mcp_responses WHERE content_ciphertext IS NOT NULL)"
            )
        )
    finally:
        await conn.close()
