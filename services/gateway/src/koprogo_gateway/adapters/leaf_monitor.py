"""The building's view of its leaf link to the hub: a port, the nats-server monitoring adapter, a fake.

LeafMonitorUnavailableError: the monitoring endpoint did not answer in time, answered an error,
or answered something that is not `/leafz`'s JSON.

The real adapter reads `GET <NATS_MONITOR_URL>/leafz` of the building's own nats-server (its HTTP
monitoring, `http_port`, on loopback): `{"leafnodes": N, "leafs": [...] | null}`, N the leaf
connections it holds; a building has one, its remote to the hub.
"""

from __future__ import annotations

import abc
import asyncio

import httpx


class LeafMonitorUnavailableError(Exception):
    pass


class LeafMonitor(abc.ABC):
    @abc.abstractmethod
    async def leaf_connections(self) -> int:
        """How many leaf connections the building's nats-server holds now; LeafMonitorUnavailableError
        when its monitoring endpoint cannot tell."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the monitor holds (an HTTP client's connections)."""


class NatsLeafzMonitor(LeafMonitor):
    """`/leafz` through `client` (its timeout bounds each read)."""

    def __init__(self, client: httpx.AsyncClient, monitor_url: str) -> None:
        self._client = client
        self._url = f"{monitor_url.rstrip('/')}/leafz"

    async def leaf_connections(self) -> int:
        try:
            answer = await self._client.get(self._url)
            answer.raise_for_status()
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise LeafMonitorUnavailableError(f"{self._url}: {exc!r}") from None
        count = body.get("leafnodes") if isinstance(body, dict) else None
        if not isinstance(count, int) or isinstance(count, bool):
            raise LeafMonitorUnavailableError(f"{self._url} answered no leafnodes count")
        return count

    async def close(self) -> None:
        await self._client.aclose()


class FakeLeafMonitor(LeafMonitor):
    """`connections` is what the next read answers; None makes it unavailable. `reads` counts the reads."""

    def __init__(self, connections: int | None = 1) -> None:
        self.connections = connections
        self.reads = 0
        self.closed = False

    async def leaf_connections(self) -> int:
        await asyncio.sleep(0)
        self.reads += 1
        if self.connections is None:
            raise LeafMonitorUnavailableError("fake monitoring endpoint unreachable")
        return self.connections

    async def close(self) -> None:
        self.closed = True
