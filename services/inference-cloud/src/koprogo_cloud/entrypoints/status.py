"""Deployment statuses on core NATS: every interval, right after connecting, and whenever asked.

Routers and gateways publish on `koprogo.nodes.announce` when they start, so they learn
of every deployment at once instead of waiting for the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from koprogo_cloud.service_layer.inference import CloudInferenceService
from koprogo_shared import subjects

log = logging.getLogger(__name__)


class StatusPublisher:
    def __init__(self, nc: NATS, service: CloudInferenceService, interval_s: float) -> None:
        self._nc = nc
        self._service = service
        self._interval_s = interval_s
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(subjects.NODES_ANNOUNCE, cb=self._on_announce)
        await self.publish_all()
        self._task = asyncio.create_task(self._every_interval(), name="cloud-status")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def publish_all(self) -> None:
        """Publish every deployment's status now; a failed publish is replaced by the next one."""
        for deployment_id in self._service.runtimes:
            status = self._service.status(deployment_id, self._interval_s)
            try:
                await self._nc.publish(
                    subjects.cloud_status(deployment_id), status.model_dump_json().encode()
                )
            except Exception as exc:  # statuses are best effort by design
                log.warning("status of %s not sent: %r", deployment_id, exc)

    async def _on_announce(self, _msg: Msg) -> None:
        await self.publish_all()

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.publish_all()
