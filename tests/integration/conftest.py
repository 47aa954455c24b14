"""Fixtures of the integration tests beyond the servers of tests/conftest.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from nats.js.errors import NotFoundError

from koprogo_shared import subjects
from koprogo_shared.kv_buckets import BUCKETS, bucket_stream, declare_buckets
from koprogo_shared.nats_connection import ensure_streams
from tests.conftest import SecuredNats
from tests.integration.cloud_support import FakeChatCompletionsApi, serving_in_thread
from tests.integration.nats_permissions_support import connected_as


@pytest.fixture
async def secured(secured_nats: SecuredNats) -> AsyncIterator[SecuredNats]:
    """The secured server with fresh KOPROGO_* streams and buckets, declared by the operator's (`admin`), as `koprogo up` does."""

    async def drop_streams() -> None:
        async with connected_as(secured_nats, "admin") as admin:
            for name in [spec.name for spec in subjects.STREAMS] + [bucket_stream(b) for b in BUCKETS]:
                with contextlib.suppress(NotFoundError):
                    await admin.js.delete_stream(name)

    await drop_streams()
    async with connected_as(secured_nats, "admin") as admin:
        await ensure_streams(admin.js)
        await declare_buckets(admin.js, rate_limit_window_s=60)
    yield secured_nats
    await drop_streams()


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[tuple[FakeChatCompletionsApi, int]]:
    """OpenAI's API at the HTTP boundary (the real one is out of reach here): it and its port."""
    api = FakeChatCompletionsApi()
    with serving_in_thread(api.app()) as port:
        yield api, port
