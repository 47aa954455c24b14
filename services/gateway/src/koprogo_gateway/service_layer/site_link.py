"""Query: which site this gateway serves and whether it reaches the hub (`GET /mcp/v1/site`).

A building's gateway reads its nats-server's leaf connections in the background, every
`poll_interval_s`, and keeps the last state; a request reads that state and never waits on the
monitoring endpoint. A hub gateway is the hub: up, always, and it reads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from datetime import datetime

from prometheus_client import Gauge
from pydantic import BaseModel

from koprogo_gateway.adapters.leaf_monitor import LeafMonitor, LeafMonitorUnavailableError
from koprogo_gateway.domain.hub_link import HubLink, LinkState, Site, link_of, observe
from koprogo_shared.events import utc_now

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 2.0

HUB_LINK_UP = Gauge(
    "koprogo_gateway_hub_link_up",
    "1 while this gateway's site reaches the hub (always on the hub), 0 while a building's leaf link "
    "is down, NaN while its nats-server's monitoring cannot tell",
)
_GAUGE_VALUE = {HubLink.UP: 1.0, HubLink.DOWN: 0.0, HubLink.UNKNOWN: math.nan}


class SitePublic(BaseModel):
    site: Site
    hub_link: HubLink
    # When `hub_link` last changed (ISO 8601, UTC); null when it has not changed since the start.
    since: datetime | None


class SiteLink:
    """The site's link to the hub, as last observed; `start()` keeps it fresh in the background."""

    def __init__(
        self,
        site: Site,
        monitor: LeafMonitor | None = None,
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if site == "building" and monitor is None:
            raise ValueError("a building's gateway needs a leaf monitor (NATS_MONITOR_URL)")
        self.site: Site = site
        self._monitor = monitor if site == "building" else None
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._state = LinkState(HubLink.UNKNOWN if site == "building" else HubLink.UP)
        self._task: asyncio.Task[None] | None = None
        HUB_LINK_UP.set(_GAUGE_VALUE[self._state.link])

    def current(self) -> SitePublic:
        """The site and its link as last observed (no I/O)."""
        return SitePublic(site=self.site, hub_link=self._state.link, since=self._state.since)

    async def check(self) -> LinkState:
        """Read the building's leaf connections once and record what they show (nothing on the hub)."""
        if self._monitor is None:
            return self._state
        try:
            connections: int | None = await self._monitor.leaf_connections()
        except LeafMonitorUnavailableError as exc:
            log.debug("leaf link state unknown: %s", exc)
            connections = None
        before = self._state
        self._state = observe(before, link_of(connections), self._clock())
        if self._state is not before:
            level = logging.INFO if self._state.link is HubLink.UP else logging.WARNING
            log.log(level, "the link to the hub is %s (was %s)", self._state.link, before.link)
        HUB_LINK_UP.set(_GAUGE_VALUE[self._state.link])
        return self._state

    def start(self) -> None:
        """Poll in the background until `close()` (a building only)."""
        if self._monitor is not None and self._task is None:
            self._task = asyncio.create_task(self._poll(), name="hub-link-poll")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._monitor is not None:
            await self._monitor.close()

    async def _poll(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                # A bug in a read must not stop the polling: the next round tries again.
                log.exception("reading the leaf link failed")
            await asyncio.sleep(self._poll_interval_s)
