"""The grid's JetStream stores, declared with the other buckets by the setup step (`kv_buckets`).

* `GRID_TASKS_BUCKET` (key-value): the scheduler's state, one key per task. File storage and
  history 1; no TTL (a task's key is deleted by the scheduler once the task is final and kept
  `FINAL_TASK_KEEP_S` for late reports).
* `GRID_NODES_BUCKET` (key-value): the scheduler's trust book, one key per node (its owner, public
  key, trust run, counts), so trust earned survives a restart (docs/grid-trust.md). File storage,
  history 1, no TTL.
* `DOCUMENTS_BUCKET` (object store): the documents of tasks, written by the gateway, read by the
  node that runs the task; kept `DOCUMENT_TTL_S` (like the audit log), capped in bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from koprogo_shared.subjects import DOCUMENTS_BUCKET, GRID_NODES_BUCKET, GRID_TASKS_BUCKET

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DOCUMENT_TTL_S = 30 * 86400.0
DOCUMENTS_MAX_BYTES = 8 * 1024**3


def object_store_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


# JetStream's "stream name already in use with a different configuration": the one refusal of a
# creation that means the stream (a bucket's, an object store's) exists. Others (a forming
# cluster's "no suitable peers for placement", replicas a single server cannot keep) mean it does
# not, and are the caller's to retry or report.
JS_STREAM_NAME_EXIST = 10058


def name_in_use(exc: nats.js.errors.BadRequestError) -> bool:
    return exc.err_code == JS_STREAM_NAME_EXIST


async def created(create: Awaitable[_T]) -> _T | None:
    """What a JetStream creation (`add_stream`, `create_key_value`, ...) returns, or None when it
    was refused because the stream exists (`name_in_use`); any other refusal is raised."""
    try:
        return await create
    except nats.js.errors.BadRequestError as exc:
        if not name_in_use(exc):
            raise
        return None


GRID_STREAMS = (
    kv_stream(GRID_TASKS_BUCKET),
    kv_stream(GRID_NODES_BUCKET),
    object_store_stream(DOCUMENTS_BUCKET),
)


async def raise_stream_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Give an existing stream (a bucket's, an object store's) at least `replicas` replicas; never fewer."""
    info = await js.stream_info(stream)
    if (info.config.num_replicas or 1) < replicas:
        info.config.num_replicas = replicas
        await js.update_stream(info.config)
        log.info("stream %s raised to %d replicas", stream, replicas)


async def ensure_kv_bucket(
    js: JetStreamContext, bucket: str, description: str, *, replicas: int = 1, ttl_s: float | None = None
) -> KeyValue:
    """Create a key-value bucket (file storage, history 1, `ttl_s` or no TTL), or keep the existing one.

    Every writer and reader declares the buckets it uses, so whichever starts first creates it; a
    bucket declared with another configuration (another version, or by hand) is kept as it is,
    except that its replicas are raised to `replicas` (the streams' count), never lowered.
    """
    config = js_api.KeyValueConfig(
        bucket=bucket,
        description=description,
        history=1,
        ttl=ttl_s,
        storage=js_api.StorageType.FILE,
        replicas=replicas,
    )
    kv = await created(js.create_key_value(config))
    if kv is not None:
        return kv
    log.info("bucket %s kept with its existing configuration", bucket)
    await raise_stream_replicas(js, kv_stream(bucket), replicas)
    return await js.key_value(bucket)


async def ensure_grid_tasks_bucket(js: JetStreamContext, *, replicas: int = 1) -> None:
    await ensure_kv_bucket(
        js,
        GRID_TASKS_BUCKET,
        "The grid scheduler's state: one key per task still to decide.",
        replicas=replicas,
    )


async def ensure_grid_nodes_bucket(js: JetStreamContext, *, replicas: int = 1) -> None:
    await ensure_kv_bucket(
        js,
        GRID_NODES_BUCKET,
        "The grid scheduler's trust book: one key per node (owner, key, trust run, counts).",
        replicas=replicas,
    )


async def ensure_documents_store(js: JetStreamContext, *, replicas: int = 1) -> None:
    config = js_api.ObjectStoreConfig(
        bucket=DOCUMENTS_BUCKET,
        description="Documents of grid tasks (invoices, minutes, charges), read by the node running the task.",
        ttl=DOCUMENT_TTL_S,
        max_bytes=DOCUMENTS_MAX_BYTES,
        storage=js_api.StorageType.FILE,
        replicas=replicas,
    )
    if await created(js.create_object_store(DOCUMENTS_BUCKET, config=config)) is None:
        log.info("documents store kept with its existing configuration")
        await raise_stream_replicas(js, object_store_stream(DOCUMENTS_BUCKET), replicas)


async def declare_grid_stores(js: JetStreamContext, *, replicas: int = 1) -> None:
    await ensure_grid_tasks_bucket(js, replicas=replicas)
    await ensure_grid_nodes_bucket(js, replicas=replicas)
    await ensure_documents_store(js, replicas=replicas)


async def grid_stores_for_service(
    js: JetStreamContext, nkey_seed_file: Path | None, *, timeout_s: float
) -> None:
    """The gateway's, the scheduler's and a grid node's start: with a key, wait for the setup
    step's stores (a service may not create or alter them); anonymous, declare them."""
    from koprogo_shared.nats_connection import stream_replicas, wait_for_streams
    from koprogo_shared.nats_privates import client_of

    if nkey_seed_file is None:
        await declare_grid_stores(js, replicas=stream_replicas(client_of(js)))
        return
    await wait_for_streams(js, list(GRID_STREAMS), timeout_s=timeout_s)
