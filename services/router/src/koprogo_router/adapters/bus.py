"""The router's port to NATS: durable publishes and direct replies."""

from __future__ import annotations

import abc

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_shared.events import Event
from koprogo_shared.publishing import publish_event, publish_reply

# How long a building's router waits for the hub's stream to acknowledge cloud work.
HUB_ACK_TIMEOUT_S = 2.0


class HubUnreachableError(Exception):
    """A building's cloud work found no stream to take it: the line to the hub is down."""


class Bus(abc.ABC):
    @abc.abstractmethod
    async def publish(self, subject: str, event: Event) -> None:
        """Store the event in JetStream (retried with the same id until acked)."""

    @abc.abstractmethod
    async def publish_at_hub(self, subject: str, event: Event) -> None:
        """A building's work for the hub's stream (over the leaf link): one attempt, stored or
        HubUnreachableError at once when no stream answers; no ack within HUB_ACK_TIMEOUT_S
        raises the timeout (the item may be stored: retried, never given up)."""

    @abc.abstractmethod
    async def reply(self, subject: str, event: Event) -> None:
        """Send the event straight to a waiting gateway (core NATS, not stored)."""


class NatsBus(Bus):
    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js

    async def publish(self, subject: str, event: Event) -> None:
        await publish_event(self.js, subject, event)

    async def publish_at_hub(self, subject: str, event: Event) -> None:
        try:
            await publish_event(self.js, subject, event, timeout=HUB_ACK_TIMEOUT_S, retry_for_s=0)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
            # No stream answered: nothing was stored. A timeout is not this: the item may be
            # stored and run at the hub, so it propagates and the request is retried (the same
            # work id, de-duplicated), never answered twice.
            raise HubUnreachableError(type(exc).__name__) from exc

    async def reply(self, subject: str, event: Event) -> None:
        await publish_reply(self.nc, subject, event.model_dump_json().encode())


class FakeBus(Bus):
    def __init__(self) -> None:
        self.published: list[tuple[str, Event]] = []
        self.replies: list[tuple[str, Event]] = []
        # False: the building's line to the hub is down (publish_at_hub raises).
        self.hub_reachable = True

    async def publish(self, subject: str, event: Event) -> None:
        self.published.append((subject, event))

    async def publish_at_hub(self, subject: str, event: Event) -> None:
        if not self.hub_reachable:
            raise HubUnreachableError("no responders")
        self.published.append((subject, event))

    async def reply(self, subject: str, event: Event) -> None:
        self.replies.append((subject, event))
