"""Follow edge-node heartbeats into a NodeRegistry (router and gateway both need it)."""

from __future__ import annotations

import logging
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter
from pydantic import ValidationError

from koprogo_shared.events import CloudDeploymentStatus, NodeHeartbeat
from koprogo_shared.nats_connection import subscribed
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.subjects import CLOUD_STATUS_ALL, NODE_HEARTBEAT_ALL, NODES_ANNOUNCE

log = logging.getLogger(__name__)

HEARTBEATS_REFUSED = Counter(
    "koprogo_heartbeats_refused_total",
    "Edge heartbeats not believed: malformed, or claiming more than their sender's key allows",
    ["reason"],
)


async def follow_heartbeats(nc: NATS, registry: NodeRegistry) -> list[Subscription]:
    """Subscribe to edge heartbeats and cloud statuses, then ask every node to announce itself now.

    Returns once the server holds the subscriptions (`nats_connection.subscribed`).

    Heartbeats are core NATS (a lost one is replaced two seconds later), so a bad
    one is logged and counted, not dead-lettered; so is one the registry refuses
    (`node_registry.heartbeat_refusal`: another node's id, a model its key was not minted for).
    """

    async def on_heartbeat(msg: Msg) -> None:
        try:
            beat = NodeHeartbeat.model_validate_json(msg.data)
        except ValidationError as exc:
            HEARTBEATS_REFUSED.labels("malformed").inc()
            log.warning("ignoring malformed heartbeat on %s: %s", msg.subject, exc.error_count())
            return
        refusal = registry.heard(msg.subject, beat, time.monotonic())
        if refusal is not None:
            HEARTBEATS_REFUSED.labels(refusal).inc()
            log.warning("refused a heartbeat on %s claiming node %r: %s", msg.subject, beat.node_id, refusal)

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
    # Returned means the server holds both subscriptions: a heartbeat published on another
    # connection from now on is heard (one flush alone does not prove it with nats-py).
    await subscribed(nc)
    return subs
