"""The stack's JetStream key-value buckets, declared in one place.

* `RATE_LIMIT_BUCKET`: the gateways' rate-limit counters (one key per policy, subject and window).
* `ROUTING_POLICY_BUCKET`: each copro's routing policy, written by the gateway, watched by routers.
* `IDEMPOTENCY_BUCKET`: the gateways' idempotency keys (one entry per user and `Idempotency-Key`,
  the request it runs as and its outcome), kept 24 h.
* `GRID_TASKS_BUCKET`, `GRID_NODES_BUCKET`, `DOCUMENTS_BUCKET`: the grid's (`grid_stores.py`).

A bucket is a stream (`KV_<bucket>`), and altering it is as dangerous as altering the event
streams: shrinking the counters' `max_age` forgives every window at once, deleting the policies'
bucket drops every copro's `edge_only`. So the setup step declares both with the streams, as
the admin identity (`python -m koprogo_shared.nats_connection`, which `koprogo up` runs), and a
service holding a key may only read and write keys (`nats_connection.buckets_for_service`).
Anonymous, on a development server without authorization, the services declare them as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api

from koprogo_shared.grid_stores import (
    declare_grid_stores,
    ensure_kv_bucket,
    object_store_stream,
    raise_stream_replicas,
)
from koprogo_shared.routing_policies import ensure_routing_policy_bucket
from koprogo_shared.subjects import (
    DOCUMENTS_BUCKET,
    GRID_NODES_BUCKET,
    GRID_TASKS_BUCKET,
    RATE_LIMIT_BUCKET,
    ROUTING_POLICY_BUCKET,
)

log = logging.getLogger(__name__)

IDEMPOTENCY_BUCKET = "KOPROGO_IDEMPOTENCY"
# How long a chat's outcome answers the retries with its key.
IDEMPOTENCY_TTL_S = 24 * 3600.0

# The gateways' window when the setup step is not told theirs (`RATE_LIMIT_WINDOW_S`).
DEFAULT_RATE_LIMIT_WINDOW_S = 60.0


def rate_limit_window_from(environ: Mapping[str, str]) -> float:
    """The gateways' window as the setup step is told it (`RATE_LIMIT_WINDOW_S`, the gateways'
    own setting); ValueError when it is not a positive number."""
    window = float(environ.get("RATE_LIMIT_WINDOW_S") or DEFAULT_RATE_LIMIT_WINDOW_S)
    if not window > 0:
        raise ValueError("RATE_LIMIT_WINDOW_S must be a positive number of seconds")
    return window


def bucket_stream(bucket: str) -> str:
    """The stream holding a bucket: `KV_<bucket>`, or `OBJ_<bucket>` for the documents' object store."""
    return object_store_stream(bucket) if bucket == DOCUMENTS_BUCKET else f"KV_{bucket}"


def rate_limit_ttl_s(window_s: float) -> float:
    """How long a counter is kept: its window and one more (margin for replicas' clock skew)."""
    return 2.0 * window_s


class RateLimitBucketError(RuntimeError):
    """The counters' bucket would expire a counter inside its window."""


def check_rate_limit_ttl(max_age_s: float | None, window_s: float) -> None:
    """Raise RateLimitBucketError when counters kept `max_age_s` (0 or None: forever) are too short-lived."""
    needed = rate_limit_ttl_s(window_s)
    if max_age_s and max_age_s < needed:
        raise RateLimitBucketError(
            f"the rate-limit bucket keeps counters {max_age_s:g} s, but a {window_s:g} s window "
            f"needs {needed:g} s: declare it again as the admin identity with this window "
            f"(RATE_LIMIT_WINDOW_S={window_s:g} python -m koprogo_shared.nats_connection)"
        )


async def raise_replicas(js: JetStreamContext, bucket: str, replicas: int) -> None:
    """Give an existing bucket at least `replicas` replicas (the streams' count); never fewer."""
    await raise_stream_replicas(js, bucket_stream(bucket), replicas)


async def ensure_rate_limit_bucket(js: JetStreamContext, ttl_s: float, *, replicas: int = 1) -> None:
    """Create the counters' bucket, or make sure the existing one keeps counters for `ttl_s`.

    File storage like every stream (a NATS restart does not forgive a window); history 1,
    since only the latest count matters; the TTL removes the keys of past windows. Reads
    are not `direct`, so they are served by the stream's leader, which also orders writes.
    `replicas`: the streams' count (`nats_connection.stream_replicas`), raised, never lowered.
    """
    config = js_api.KeyValueConfig(
        bucket=RATE_LIMIT_BUCKET,
        description="Rate-limit counters of the gateways, one key per policy, subject and window.",
        history=1,
        ttl=ttl_s,
        storage=js_api.StorageType.FILE,
        replicas=replicas,
    )
    try:
        await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        # The bucket exists with another configuration (a replica with another window):
        # keep it, but never with a TTL that would expire a counter inside its window.
        info = await js.stream_info(bucket_stream(RATE_LIMIT_BUCKET))
        if (info.config.max_age or 0) < ttl_s:
            info.config.max_age = ttl_s
            await js.update_stream(info.config)
            log.info("rate-limit bucket TTL raised to %ss", ttl_s)
        await raise_replicas(js, RATE_LIMIT_BUCKET, replicas)


async def ensure_idempotency_bucket(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the idempotency keys' bucket, or keep the existing one.

    File storage like every stream (a NATS restart must not run a request twice); history 1,
    since an entry is only ever created, then settled; the TTL forgets keys after 24 h.
    """
    await ensure_kv_bucket(
        js,
        IDEMPOTENCY_BUCKET,
        "Idempotency keys of the gateways' chats: the request each runs as, and its outcome.",
        replicas=replicas,
        ttl_s=IDEMPOTENCY_TTL_S,
    )


async def declare_buckets(js: JetStreamContext, *, rate_limit_window_s: float, replicas: int = 1) -> None:
    """Every bucket, as the setup step declares them (the counters kept for `rate_limit_window_s`),
    each with at least `replicas` replicas."""
    await ensure_rate_limit_bucket(js, rate_limit_ttl_s(rate_limit_window_s), replicas=replicas)
    await ensure_routing_policy_bucket(js, replicas=replicas)
    await ensure_idempotency_bucket(js, replicas=replicas)
    await declare_grid_stores(js, replicas=replicas)


BUCKETS = (
    RATE_LIMIT_BUCKET,
    ROUTING_POLICY_BUCKET,
    IDEMPOTENCY_BUCKET,
    GRID_TASKS_BUCKET,
    GRID_NODES_BUCKET,
    DOCUMENTS_BUCKET,
)
