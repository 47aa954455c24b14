"""The one NATS helper: connect, declare streams, publish events with de-duplication ids."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from koprogo_shared.events import Event
from koprogo_shared.subjects import STREAMS, StreamSpec

log = logging.getLogger(__name__)

PUBLISH_ATTEMPTS = 5


async def connect_nats(url: str, name: str) -> tuple[NATS, JetStreamContext]:
    """Connect with unlimited reconnects; errors are logged, never swallowed silently."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error (%s): %s", name, exc)

    async def on_disconnected() -> None:
        log.warning("nats disconnected (%s)", name)

    async def on_reconnected() -> None:
        log.info("nats reconnected (%s)", name)

    nc = await nats.connect(
        servers=[url],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    return nc, nc.jetstream(timeout=5)


def _stream_config(spec: StreamSpec) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=spec.subjects,
        retention=js_api.RetentionPolicy(spec.retention),
        storage=js_api.StorageType.FILE,
        max_age=spec.max_age_s,
        max_bytes=spec.max_bytes,
        duplicate_window=spec.duplicate_window_s,
        discard=js_api.DiscardPolicy.OLD,
        num_replicas=1,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    """Create every stream, or bring an existing one to the declared configuration."""
    for spec in STREAMS:
        config = _stream_config(spec)
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError:
                # Another service created it between our two calls.
                await js.update_stream(config)
        else:
            await js.update_stream(config)


def event_headers(event: Event) -> dict[str, str]:
    return {"Nats-Msg-Id": event.id, "ce-type": getattr(event, "type", ""), "ce-source": event.source}


async def publish_event(js: JetStreamContext, subject: str, event: Event, *, timeout: float = 2.0) -> Any:
    """Publish to JetStream and wait for the stream's ack, retrying with the same `Nats-Msg-Id`.

    Retries are de-duplicated by the stream, so a publish that was stored but whose ack
    was lost is not stored twice. Raises the last error when every attempt failed.
    """
    payload = event.model_dump_json().encode()
    headers = event_headers(event)
    delay = 0.05
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            return await js.publish(subject, payload, timeout=timeout, headers=headers)
        except (
            TimeoutError,
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.NoStreamResponseError,
            nats.errors.ConnectionReconnectingError,
        ):
            if attempt == PUBLISH_ATTEMPTS:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")
