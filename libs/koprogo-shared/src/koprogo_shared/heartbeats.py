"""Follow edge-node heartbeats into a NodeRegistry (router and gateway both need it)."""

from __future__ import annotations

import logging
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from koprogo_shared.events import NodeHeartbeat
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.subjects import NODE_HEARTBEAT_ALL, NODES_ANNOUNCE

log = logging.getLogger(__name__)


async def follow_heartbeats(nc: NATS, registry: NodeRegistry) -> Subscription:
    """Subscribe to heartbeats, then ask every node to announce itself now.

    Heartbeats are core NATS (a lost one is replaced two seconds later), so a bad
    one is logged and counted, not dead-lettered.
    """

    async def on_heartbeat(msg: Msg) -> None:
        try:
            beat = NodeHeartbeat.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("ignoring malformed heartbeat on %s: %s", msg.subject, exc.error_count())
            return
        registry.observe(beat, time.monotonic())

    sub = await nc.subscribe(NODE_HEARTBEAT_ALL, cb=on_heartbeat)
    await nc.publish(NODES_ANNOUNCE, b"")
    await nc.flush()
    return sub
