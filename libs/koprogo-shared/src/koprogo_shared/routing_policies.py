"""The copros' routing policies bucket (JetStream key-value), declared the same way by its writers and readers.

The gateway writes it (`PUT /mcp/v1/copros/{id}/routing`, admins only); the routers watch it.
Either may start first, so both declare it with this one configuration.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from koprogo_shared.grid_stores import ensure_kv_bucket
from koprogo_shared.subjects import ROUTING_POLICY_BUCKET


async def ensure_routing_policy_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    """Create the policies' bucket unless it exists (whoever declared it, its configuration is kept).

    File storage (a NATS restart keeps every policy), history 1 (only the current policy
    matters), no TTL: a policy stays until an admin resets it. `replicas`: the streams' count
    (`nats_connection.stream_replicas`); an existing bucket's are raised to it, never lowered.
    """
    return await ensure_kv_bucket(
        js,
        ROUTING_POLICY_BUCKET,
        "Routing policy of each copro (a RoutingPreference as JSON), set by admins.",
        replicas=replicas,
    )
