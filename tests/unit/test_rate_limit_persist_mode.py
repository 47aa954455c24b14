"""Which persist mode the counters' bucket is declared with, from the server's INFO and the replicas."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.js import JetStreamContext
from nats.js import api as js_api

from koprogo_shared.kv_buckets import rate_limit_persist_mode, server_version


def js_of(info: dict[str, Any]) -> JetStreamContext:
    """A JetStream context as far as these read it: its connection's INFO from the server."""
    return cast(JetStreamContext, SimpleNamespace(_nc=SimpleNamespace(_server_info=info)))


@pytest.mark.parametrize(
    ("version", "expected"),
    [("2.15.1", (2, 15, 1)), ("2.12.0-RC.3", (2, 12, 0)), ("2.10", (2, 10)), ("", (0,)), ("beta", (0,))],
)
def test_the_servers_version_is_read_as_numbers(version: str, expected: tuple[int, ...]) -> None:
    assert server_version(js_of({"version": version})) == expected


def test_a_server_that_names_no_version_counts_as_old() -> None:
    assert server_version(js_of({})) == (0,)


@pytest.mark.parametrize(
    ("version", "replicas", "mode"),
    [
        ("2.15.1", 1, js_api.PersistMode.ASYNC),
        ("2.12.0", 1, js_api.PersistMode.ASYNC),
        ("2.15.1", 3, js_api.PersistMode.DEFAULT),  # JetStream refuses async above one replica
        ("2.11.9", 1, js_api.PersistMode.DEFAULT),  # before persist modes: as every stream
    ],
)
def test_the_counters_are_async_on_one_server_that_knows_it(
    version: str, replicas: int, mode: js_api.PersistMode
) -> None:
    assert rate_limit_persist_mode(js_of({"version": version}), replicas) is mode
