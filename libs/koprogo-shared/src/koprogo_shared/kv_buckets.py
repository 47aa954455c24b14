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

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from koprogo_shared.grid_stores import (
    created,
    declare_grid_stores,
    ensure_kv_bucket,
    object_store_stream,
    raise_stream_replicas,
)
from koprogo_shared.nats_privates import client_of, server_info
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


# Where the moves of the counters' bucket take turns (`_move_lock`). A key lives MOVE_LOCK_TTL_S
# at most: longer than a move's seal-to-declaration (seconds for ~10,000 counters).
SETUP_LOCKS_BUCKET = "KOPROGO_SETUP_LOCKS"
MOVE_LOCK_KEY = "rate-limit-move"
MOVE_LOCK_TTL_S = 60.0
MOVE_LOCK_POLL_S = 0.05

# nats-server 2.12 brought a stream's `persist_mode`; `async` (ADR-56) is taken by R1 streams only.
ASYNC_PERSIST_SERVER = (2, 12)


def server_version(js: JetStreamContext) -> tuple[int, ...]:
    """The connected server's version, as numbers ((0,) when it did not say)."""
    version = str(server_info(client_of(js)).get("version", "0"))
    numbers = []
    for part in version.split("-")[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers) or (0,)


def rate_limit_persist_mode(js: JetStreamContext, replicas: int) -> js_api.PersistMode:
    """How the counters are written: `async` on one server that knows it, else fsynced (`default`)."""
    if replicas == 1 and server_version(js) >= ASYNC_PERSIST_SERVER:
        return js_api.PersistMode.ASYNC
    return js_api.PersistMode.DEFAULT


def _counters_stream(ttl_s: float, replicas: int, mode: js_api.PersistMode) -> js_api.StreamConfig:
    """The counters' bucket as a stream: what nats-py's `create_key_value` declares (history 1,
    `ttl_s`), with a persist mode, which `KeyValueConfig` cannot carry."""
    return js_api.StreamConfig(
        name=bucket_stream(RATE_LIMIT_BUCKET),
        description="Rate-limit counters of the gateways, one key per policy, subject and window.",
        subjects=[f"$KV.{RATE_LIMIT_BUCKET}.>"],
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=js_api.DiscardPolicy.NEW,
        duplicate_window=min(120.0, ttl_s),
        max_age=ttl_s,
        max_consumers=-1,
        max_msgs=-1,
        max_msgs_per_subject=1,
        num_replicas=replicas,
        storage=js_api.StorageType.FILE,
        # Unset is the server's default (it does not store `default`).
        persist_mode=mode if mode is not js_api.PersistMode.DEFAULT else None,
    )


async def ensure_rate_limit_bucket(js: JetStreamContext, ttl_s: float, *, replicas: int = 1) -> None:
    """Create the counters' bucket, or make sure the existing one keeps counters for `ttl_s`.

    File storage, written `async` on a single server (`rate_limit_persist_mode`): the server
    acknowledges a counter's write before its fsync, so the compare-and-set on every chat's path
    costs no fsync (the stream overrides `sync_interval: always` for itself). A counter is not
    data: a crash of the server (SIGKILL, power loss) may lose the last writes, which forgives
    those requests in the current window once; a graceful restart keeps every count, and while
    the server runs the limits stay exact. Replicated (a cluster), the counters stay fsynced:
    JetStream takes `async` for R1 streams only. History 1, since only the latest count matters;
    the TTL removes the keys of past windows. Reads are not `direct`, so they are served by the
    stream's leader, which also orders writes.

    An existing bucket keeps its counts: its TTL is raised to `ttl_s` when shorter, its replicas
    to `replicas` (never lowered), and when its persist mode is not the one wanted (a bucket
    declared before this mode, or raised from one server to three) it is declared again
    (`_move_counters`: the mode cannot be changed in place).
    """
    stream = bucket_stream(RATE_LIMIT_BUCKET)
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        config = _counters_stream(ttl_s, replicas, rate_limit_persist_mode(js, replicas))
        if await created(js.add_stream(config)) is not None:
            return
        info = await js.stream_info(stream)  # another setup step created it meanwhile
    kept_s = max(ttl_s, info.config.max_age or 0)
    wanted_replicas = max(replicas, info.config.num_replicas or 1)
    mode = rate_limit_persist_mode(js, wanted_replicas)
    if info.config.sealed or (info.config.persist_mode or js_api.PersistMode.DEFAULT) != mode:
        await _move_counters(js, _counters_stream(kept_s, wanted_replicas, mode))
        return
    # Never with a TTL that would expire a counter inside its window.
    if (info.config.max_age or 0) < ttl_s:
        info.config.max_age = ttl_s
        await js.update_stream(info.config)
        log.info("rate-limit bucket TTL raised to %ss", ttl_s)
    await raise_replicas(js, RATE_LIMIT_BUCKET, replicas)


async def _move_counters(js: JetStreamContext, config: js_api.StreamConfig) -> None:
    """Declare the counters' bucket again as `config`, with every count it holds.

    The stream is sealed first, so no gateway's write can land between the copy and the
    deletion (a gateway's write meanwhile fails: a 503 `rate_limit_unavailable`, or admitted
    with RATE_LIMIT_FAIL_OPEN, for well under a second); every key's count is read, the stream
    deleted and declared again, and each count added to whatever a gateway wrote in the new
    stream since, so every window keeps every request it counted. A step that fails leaves
    the stream sealed, which the next declaration takes up from the copy. Seal, read, deletion
    and declaration are done under `_move_lock`, one setup step at a time.
    """
    stream = bucket_stream(RATE_LIMIT_BUCKET)
    # Other setup steps may be moving it at the same time (anonymous gateways starting together):
    # one at a time, so that none deletes the stream another has just declared again. Whoever
    # comes next finds the new stream in the wanted mode, and leaves it.
    async with _move_lock(js, config.num_replicas or 1):
        try:
            if not await _sealed(js, stream, config):
                return
            counts = await _read_counters(js, stream)
            await js.delete_stream(stream)
        except nats.js.errors.NotFoundError:
            return  # deleted meanwhile by a hand (or a step that did not wait for the lock)
        # Already there (None) when a gateway declared it since the deletion (another TTL): the
        # counts go to that one
        await created(js.add_stream(config))
    kv = await js.key_value(RATE_LIMIT_BUCKET)
    for key, count in counts.items():
        await _add_count(kv, key, count)
    log.info(
        "rate-limit bucket declared again (%d replica(s), persist mode %s) with its %d counter(s)",
        config.num_replicas,
        (config.persist_mode or js_api.PersistMode.DEFAULT).value,
        len(counts),
    )


@asynccontextmanager
async def _move_lock(js: JetStreamContext, replicas: int) -> AsyncIterator[None]:
    """Hold the lock on moving the counters' bucket: a key created in `SETUP_LOCKS_BUCKET` (one
    `create` succeeds), deleted on release. The bucket's TTL expires the key of a step that died
    holding it, so such a step delays the others by `MOVE_LOCK_TTL_S` at most, never blocks them;
    a step that waited longer than that raises RateLimitBucketError."""
    locks = await ensure_kv_bucket(
        js,
        SETUP_LOCKS_BUCKET,
        "Short-lived locks of the setup steps (the counters' bucket's move).",
        replicas=replicas,
        ttl_s=MOVE_LOCK_TTL_S,
    )
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + 2 * MOVE_LOCK_TTL_S
    while True:
        try:
            revision = await locks.create(MOVE_LOCK_KEY, b"")
            break
        except nats.js.errors.KeyWrongLastSequenceError:
            if loop.time() > give_up_at:
                raise RateLimitBucketError(
                    f"another setup step has held the counters' bucket's move for over {2 * MOVE_LOCK_TTL_S:g} s"
                ) from None
            await asyncio.sleep(MOVE_LOCK_POLL_S)
    try:
        yield
    finally:
        # Only our own key: if it expired and another step holds the lock now, it is theirs.
        with contextlib.suppress(nats.errors.Error):
            await locks.delete(MOVE_LOCK_KEY, last=revision)


async def _sealed(js: JetStreamContext, stream: str, config: js_api.StreamConfig) -> bool:
    """Seal the stream to move; False when it needs no move any more (another step moved it)."""
    info = await js.stream_info(stream)
    if info.config.sealed:
        return True
    if js_api.PersistMode(info.config.persist_mode or "default") == js_api.PersistMode(
        config.persist_mode or "default"
    ) and (info.config.num_replicas or 1) >= (config.num_replicas or 1):
        return False
    info.config.sealed = True
    try:
        await js.update_stream(info.config)
    except nats.js.errors.APIError:
        if not (await js.stream_info(stream)).config.sealed:  # else sealed by another step
            raise
    return True


async def _read_counters(js: JetStreamContext, stream: str) -> dict[str, int]:
    """Every key's count in the (sealed) stream: its latest value, deletions and non-integers left out."""
    prefix = f"$KV.{RATE_LIMIT_BUCKET}."
    counts: dict[str, int] = {}
    seq = 1
    while True:
        try:
            # The first message at or after `seq` (a subject is needed for "next": every key's).
            msg = await js.get_msg(stream, seq=seq, subject=f"{prefix}>", next=True)
        except nats.js.errors.NotFoundError:
            return counts
        seq = (msg.seq or seq) + 1
        key = (msg.subject or "").removeprefix(prefix)
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            counts.pop(key, None)
            continue
        try:
            counts[key] = int(msg.data or b"")
        except ValueError:
            log.warning("rate-limit counter %s holds no integer: not moved", key)


async def _add_count(kv: KeyValue, key: str, count: int) -> None:
    """Add `count` to the counter under `key` (created when absent), by compare-and-set."""
    while True:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            try:
                await kv.create(key, str(count).encode())
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        current = int(entry.value or b"0")
        try:
            await kv.update(key, str(current + count).encode(), last=entry.revision)
            return
        except nats.js.errors.KeyWrongLastSequenceError:
            continue


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
