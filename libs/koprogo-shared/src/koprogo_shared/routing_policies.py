"""The copros' routing policies bucket (JetStream key-value), declared the same way by its writers and readers.

The gateway writes it (`PUT /mcp/v1/copros/{id}/routing`, admins only); the routers watch it.
Either may start first, so both declare it with this one configuration.
"""

from __future__ import annotations

import logging

import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from koprogo_shared.subjects import ROUTING_POLICY_BUCKET

log = logging.getLogger(__name__)


async def ensure_routing_policy_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    """Create the policies' bucket unless it exists (whoever declared it, its configuration is kept).

    File storage (a NATS restart keeps every policy), history 1 (only the current policy
    matters), no TTL: a policy stays until an admin resets it. `replicas`: the streams' count
    (`nats_connection.stream_replicas`); an existing bucket's are raised to it, never lowered.
    """
    config = js_api.KeyValueConfig(
        bucket=ROUTING_POLICY_BUCKET,
        description="Routing policy of each copro (a RoutingPreference as JSON), set by admins.",
        history=1,
        storage=js_api.StorageType.FILE,
        replicas=replicas,
    )
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        # Declared with another configuration (by another version, or by hand): any bucket
        # holding one value per key serves, so it is kept as it is.
        log.info("routing-policy bucket %s exists with another configuration; kept", ROUTING_POLICY_BUCKET)
        info = await js.stream_info(f"KV_{ROUTING_POLICY_BUCKET}")
        if (info.config.num_replicas or 1) < replicas:
            info.config.num_replicas = replicas
            await js.update_stream(info.config)
            log.info("routing-policy bucket raised to %d replicas", replicas)
        return await js.key_value(ROUTING_POLICY_BUCKET)
