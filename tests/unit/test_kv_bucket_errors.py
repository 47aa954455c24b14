"""Which refusals of a bucket's creation mean "it exists" (a fake JetStream: the refusal of a
cluster still placing its peers cannot be had on demand from a real one)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import nats.js.errors
import pytest
from nats.js import JetStreamContext

from koprogo_shared.grid_stores import JS_STREAM_NAME_EXIST, ensure_documents_store, ensure_kv_bucket


class _RefusingJetStream:
    """Refuses every creation with `refusal`; knows one existing stream of one replica."""

    def __init__(self, refusal: nats.js.errors.BadRequestError) -> None:
        self.refusal = refusal
        self.updated: list[Any] = []
        self.opened: list[str] = []

    async def create_key_value(self, config: Any) -> Any:
        raise self.refusal

    async def create_object_store(self, bucket: str, config: Any) -> Any:
        raise self.refusal

    async def stream_info(self, stream: str) -> Any:
        return SimpleNamespace(config=SimpleNamespace(num_replicas=1))

    async def update_stream(self, config: Any) -> None:
        self.updated.append(config)

    async def key_value(self, bucket: str) -> str:
        self.opened.append(bucket)
        return f"kv:{bucket}"


def _refusal(err_code: int, description: str) -> nats.js.errors.BadRequestError:
    return nats.js.errors.BadRequestError(code=400, err_code=err_code, description=description)


def test_a_bucket_refused_as_existing_is_kept_and_its_replicas_raised() -> None:
    js = _RefusingJetStream(_refusal(JS_STREAM_NAME_EXIST, "stream name already in use"))
    kv = asyncio.run(ensure_kv_bucket(cast(JetStreamContext, js), "B", "a bucket", replicas=3))
    assert kv == "kv:B"
    assert [c.num_replicas for c in js.updated] == [3]


def test_a_bucket_refused_for_another_reason_is_not_taken_as_existing() -> None:
    # A forming cluster's refusal: the bucket does not exist, and looking its stream up would
    # fail with "stream not found", hiding the cause.
    js = _RefusingJetStream(_refusal(10005, "no suitable peers for placement"))
    with pytest.raises(nats.js.errors.BadRequestError, match="no suitable peers"):
        asyncio.run(ensure_kv_bucket(cast(JetStreamContext, js), "B", "a bucket", replicas=3))
    assert js.opened == [] and js.updated == []


def test_the_documents_store_is_kept_only_when_refused_as_existing() -> None:
    js = _RefusingJetStream(_refusal(JS_STREAM_NAME_EXIST, "stream name already in use"))
    asyncio.run(ensure_documents_store(cast(JetStreamContext, js), replicas=3))
    assert [c.num_replicas for c in js.updated] == [3]
    js = _RefusingJetStream(_refusal(10005, "no suitable peers for placement"))
    with pytest.raises(nats.js.errors.BadRequestError):
        asyncio.run(ensure_documents_store(cast(JetStreamContext, js), replicas=3))
