"""The chat use case's metrics, counted by `chat.py` and `chat_keyed.py` alike."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

from koprogo_gateway.domain.errors import GatewayError

CHATS = Counter("koprogo_gateway_chats_total", "Chat requests by outcome", ["outcome"])
LATENCY = Histogram(
    "koprogo_gateway_chat_latency_seconds",
    "End-to-end chat latency",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
# How many deliveries each stored delivery record lists (`delivery_records.py`): 1 when quiet.
DELIVERIES_PER_RECORD = Histogram(
    "koprogo_gateway_deliveries_per_record",
    "Deliveries listed by each stored delivery record (ChatsDelivered)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 500),
)


def not_answered(exc: GatewayError, headers: dict[str, str]) -> None:
    """Count a request that got no answer; its error carries the rate-limit fields it was admitted with."""
    CHATS.labels(outcome=exc.error).inc()
    exc.headers = headers | exc.headers


@contextmanager
def unanswered_counted(headers: dict[str, str]) -> Iterator[None]:
    """Count a request that got no answer (`not_answered`), or whose caller left (its task cancelled)."""
    try:
        yield
    except GatewayError as exc:
        not_answered(exc, headers)
        raise
    except asyncio.CancelledError:
        CHATS.labels(outcome="caller_left").inc()
        raise
