"""Follow edge-node heartbeats into a NodeRegistry (router and gateway both need it)."""

from __future__ import annotations

import logging
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from koprogo_shared.events import CloudDeploymentStatus, NodeHeartbeat
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.subjects import CLOUD_STATUS_ALL, NODE_HEARTBEAT_ALL, NODES_ANNOUNCE

log = logging.getLogger(__name__)


async def follow_heartbeats(nc: NATS, registry: NodeRegistry) -> list[Subscription]:
    """Subscribe to edge heartbeats and cloud statuses, then ask every node to announce itself now.

    Heartbeats are core NATS (a lost one is replaced two seconds later), so a bad
    one is logged and counted, not dead-lettered.
    """

    async def on_heartbeat(msg: Msg) -> None:
        try:
            beat = NodeHeartbeat.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("ignoring malformed heartbeat on %s: %s", msg.subject, exc.error_count())
            return
        if beat.leaving:
            registry.forget(beat.node_id)
        else:
            registry.observe(beat, time.monotonic())

    async def on_cloud_status(msg: Msg) -> None:
        try:
            status = CloudDeploymentStatus.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("ignoring malformed cloud status on %s: %s", msg.subject, exc.error_count())
            return
        registry.observe_cloud(status, time.monotonic())

    subs = [
        await nc.subscribe(NODE_HEARTBEAT_ALL, cb=on_heartbeat),
        await nc.subscribe(CLOUD_STATUS_ALL, cb=on_cloud_status),
    ]
    await nc.publish(NODES_ANNOUNCE, b"")
    await nc.flush()
    return subs
