"""The router's port to NATS: durable publishes and direct replies."""

from __future__ import annotations

import abc

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_shared.events import Event
from koprogo_shared.nats_connection import publish_event, publish_reply


class Bus(abc.ABC):
    @abc.abstractmethod
    async def publish(self, subject: str, event: Event) -> None:
        """Store the event in JetStream (retried with the same id until acked)."""

    @abc.abstractmethod
    async def reply(self, subject: str, event: Event) -> None:
        """Send the event straight to a waiting gateway (core NATS, not stored)."""


class NatsBus(Bus):
    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js

    async def publish(self, subject: str, event: Event) -> None:
        await publish_event(self.js, subject, event)

    async def reply(self, subject: str, event: Event) -> None:
        await publish_reply(self.nc, subject, event.model_dump_json().encode())


class FakeBus(Bus):
    def __init__(self) -> None:
        self.published: list[tuple[str, Event]] = []
        self.replies: list[tuple[str, Event]] = []

    async def publish(self, subject: str, event: Event) -> None:
        self.published.append((subject, event))

    async def reply(self, subject: str, event: Event) -> None:
        self.replies.append((subject, event))
