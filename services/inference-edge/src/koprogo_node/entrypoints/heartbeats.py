"""Heartbeats on core NATS: every interval, right after connecting, and whenever asked.

Routers and gateways publish on `koprogo.nodes.announce` when they start, so they
learn of every live node at once instead of waiting for the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from koprogo_node.service_layer.inference import InferenceService
from koprogo_shared import subjects

log = logging.getLogger(__name__)


class HeartbeatPublisher:
    def __init__(
        self,
        nc: NATS,
        service: InferenceService,
        interval_s: float,
        resident: Callable[[], bool] = lambda: True,
        pools: Sequence[str] = (subjects.SHARED_POOL,),
        task_types: Sequence[str] = (),
        public_key: str | None = None,
        *,
        takes_routed_requests: bool = False,
    ) -> None:
        self._nc = nc
        # Its consumers of routed requests are declared (`NodeHeartbeat.takes_routed_requests`).
        self._takes_routed_requests = takes_routed_requests
        # The grid key its reports are signed with (None: not on the grid).
        self._public_key = public_key
        self._pools = list(pools)
        self._task_types = list(task_types)
        self._resident = resident
        self._service = service
        self._interval_s = interval_s
        self._subject = subjects.node_heartbeat(service.node.node_id)
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(subjects.NODES_ANNOUNCE, cb=self._on_announce)
        await self.beat()
        self._task = asyncio.create_task(self._every_interval())

    async def stop(self) -> None:
        """Stop beating and say the node is leaving, so routers fall back to other targets at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        await self.beat(leaving=True)
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=1)

    async def beat(self, *, leaving: bool = False) -> None:
        """Publish the node's state now; a failed publish is replaced by the next one."""
        beat = self._service.heartbeat(self._interval_s)
        update = {
            "resident": self._resident(),
            "pools": self._pools,
            "task_types": self._task_types,
            "public_key": self._public_key,
            "takes_routed_requests": self._takes_routed_requests,
        } | ({"leaving": True} if leaving else {})
        beat = beat.model_copy(update=update)
        try:
            await self._nc.publish(self._subject, beat.model_dump_json().encode())
        except Exception as exc:  # heartbeats are best effort by design
            log.warning("heartbeat not sent: %r", exc)

    async def _on_announce(self, _msg: Msg) -> None:
        await self.beat()

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.beat()
