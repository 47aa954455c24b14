"""GDPR for any user id: export and erasure find every row of the token's user, whatever the
shape of its `sub` (the dev token's `dev-user`, `koprogo token --user alice`, an e-mail from an
identity provider, a UUID), before and after the retention purge."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from koprogo_gateway.adapters.user_data_repository import PostgresUserDataRepository
from koprogo_shared.content_crypto import Keyring
from koprogo_shared.events import Event, UserDataErasureRequested
from tests.conftest import TEST_CONTENT_KEYS, wait_until
from tests.integration.ledger_support import (
    T0,
    LedgerUnderTest,
    chat_completed,
    chat_requested,
    running_ledger,
)

pytestmark = pytest.mark.integration

UUID_USER = str(uuid.uuid4())
USERS = ["dev-user", "alice", "alice.martin+syndic@example.be", UUID_USER]
# Long enough for T0 (2025) to be inside it: while projecting, nothing is purged.
KEEP_EVERYTHING = 100_000
AVAILABLE, PURGED = ("available", "available"), ("purged", "purged")


def keyring() -> Keyring:
    return Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])


def chats_of(user: str) -> list[Event]:
    """An answered chat from T0 (past any retention window), then one from yesterday."""
    events: list[Event] = []
    for at in (T0, datetime.now(UTC) - timedelta(days=1)):
        request = chat_requested(at=at).model_copy(update={"user_id": user})
        events += [request, chat_completed(request)]
    return events


async def exports(db: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    """Each user's GDPR export, as the gateway reads it."""
    repository = PostgresUserDataRepository(db, keyring())
    return {user: await repository.export(user) for user in USERS}


def statuses(requests: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(request, response) contents status of each request, oldest first."""
    return [(r["contents_status"], r["response"]["contents_status"]) for r in requests]


async def erase(ledger: LedgerUnderTest, user: str) -> None:
    erasure = UserDataErasureRequested(source="tests/gateway", user_id=user, requested_by=user)
    await ledger.publish(erasure)
    await wait_until(lambda: ledger.applied(erasure.id))
    await wait_until(ledger.settled)


async def old_rows_purged(db: asyncpg.Pool) -> bool:
    found = await db.fetchval(
        "SELECT count(*) FROM mcp_requests WHERE created_at < now() - interval '30 days'"
        " AND contents_purged_at IS NOT NULL"
    )
    return bool(found == len(USERS))


async def test_every_users_rows_are_exported_and_erased_whatever_the_shape_of_their_id(
    database_url: str, clean_jetstream: str
) -> None:
    chats = {user: chats_of(user) for user in USERS}
    events = [event for user in USERS for event in chats[user]]
    async with running_ledger(database_url, clean_jetstream, retention_days=KEEP_EVERYTHING) as ledger:
        for event in events:
            await ledger.publish(event)
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=30)
        before = await exports(ledger.db)
        for user, requests in before.items():
            assert [r["id"] for r in requests] == [chats[user][0].id, chats[user][2].id], user
            assert statuses(requests) == [AVAILABLE, AVAILABLE], user
            assert {r["messages"][0]["content"] for r in requests} == {"Quand a lieu la prochaine AG ?"}
            assert {r["response"]["content"] for r in requests} == {"Le 12 juin à 18 h."}

        # Before retention: alice's erasure takes both her chats' contents, and nobody else's.
        await erase(ledger, "alice")
        for user, requests in (await exports(ledger.db)).items():
            assert statuses(requests) == [PURGED if user == "alice" else AVAILABLE] * 2, user

    # Retention (the default 30-day window) purges the 2025 chats; every row stays its user's.
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await wait_until(lambda: old_rows_purged(ledger.db), timeout=20)
        for user, requests in (await exports(ledger.db)).items():
            assert [r["id"] for r in requests] == [r["id"] for r in before[user]], user
            assert statuses(requests) == [PURGED, PURGED if user == "alice" else AVAILABLE], user

        # After retention: each erasure takes what is left of its user's contents, and nobody else's.
        erased = ["alice"]
        for user in USERS[:1] + USERS[2:]:
            # A UUID is the same user however it is spelt, as the gateway's access rule says.
            await erase(ledger, user.upper() if user == UUID_USER else user)
            erased.append(user)
            for other, requests in (await exports(ledger.db)).items():
                assert statuses(requests) == [PURGED, PURGED if other in erased else AVAILABLE], (user, other)
                assert [r["response"]["usage"] for r in requests] == [
                    r["response"]["usage"] for r in before[other]
                ]


async def test_requests_stored_before_text_user_ids_get_their_owner_back_from_the_audit_log(
    database_url: str, clean_jetstream: str
) -> None:
    chats = {user: chats_of(user) for user in ("alice", "dev-user")}
    anonymous = chat_requested().model_copy(update={"user_id": None})  # authentication off
    events = [*chats["alice"], *chats["dev-user"], anonymous]
    async with running_ledger(database_url, clean_jetstream, retention_days=KEEP_EVERYTHING) as ledger:
        for event in events:
            await ledger.publish(event)
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=30)
        # As a ledger from before migration 0004 left them: no user on the rows of non-UUID ids.
        await ledger.db.execute("UPDATE mcp_requests SET user_ref = NULL")
        await ledger.db.execute("UPDATE schema_migrations SET applied_at = now() WHERE version = 4")
        assert (await exports(ledger.db))["alice"] == []

    async with running_ledger(database_url, clean_jetstream, retention_days=KEEP_EVERYTHING) as ledger:

        async def owners_back() -> bool:
            found = await exports(ledger.db)
            return len(found["alice"]) == len(found["dev-user"]) == 2

        await wait_until(owners_back, timeout=20)
        found = await exports(ledger.db)
        for user in ("alice", "dev-user"):
            assert [r["id"] for r in found[user]] == [chats[user][0].id, chats[user][2].id]
        assert await ledger.db.fetchval(
            "SELECT user_ref IS NULL FROM mcp_requests WHERE id = $1", uuid.UUID(anonymous.id)
        )
        await erase(ledger, "alice")
        assert statuses((await exports(ledger.db))["alice"]) == [PURGED, PURGED]
        assert statuses((await exports(ledger.db))["dev-user"]) == [AVAILABLE, AVAILABLE]
