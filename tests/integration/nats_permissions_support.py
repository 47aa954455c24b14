"""A client of the secured NATS server under one identity, and what the server refused it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_shared import subjects
from koprogo_shared.nats_connection import nkey_public_key
from tests.conftest import SecuredNats


class Refusals:
    """What the server refused this client, as nats-py reports it (lower case)."""

    def __init__(self) -> None:
        self.errors: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(self, exc: Exception) -> None:
        self.errors.put_nowait(str(exc).lower())

    async def next(self, timeout: float = 5.0) -> str:
        return await asyncio.wait_for(self.errors.get(), timeout)


@dataclass
class Client:
    nc: NATS
    js: JetStreamContext
    refusals: Refusals


@asynccontextmanager
async def connected_as(server: SecuredNats, identity: str) -> AsyncIterator[Client]:
    """A raw client holding `identity`'s nkey, with the inbox its permissions allow."""
    seed_file = server.seed_files[identity]
    refusals = Refusals()
    nc = await nats.connect(
        server.url,
        nkeys_seed=str(seed_file),
        inbox_prefix=subjects.inbox_prefix(nkey_public_key(seed_file)),
        error_cb=refusals.on_error,
        allow_reconnect=False,
    )
    try:
        yield Client(nc, nc.jetstream(timeout=2), refusals)
    finally:
        await nc.close()


async def request_refused(action: Awaitable[object]) -> None:
    """A refused JetStream API request is dropped by the server: no answer comes."""
    with pytest.raises(nats.errors.TimeoutError):
        await action
