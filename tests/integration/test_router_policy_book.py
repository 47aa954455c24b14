"""The router's (and a gateway's) copy of the copros' routing policies follows the bucket, and survives
losing it; so do the routers' own defaults stored there."""

from __future__ import annotations

import nats
import pytest

from koprogo_shared.events import RoutingPreference
from koprogo_shared.routing.policy_book import RouterDefaults, WatchedPolicyBook, publish_router_defaults
from koprogo_shared.routing_policies import ensure_routing_policy_bucket
from koprogo_shared.subjects import ROUTER_DEFAULTS_KEY, ROUTING_POLICY_BUCKET
from tests.conftest import wait_until

pytestmark = pytest.mark.integration
EDGE_ONLY = RoutingPreference(policy="edge_only")


async def test_policies_stored_before_start_are_known_at_once_and_changes_follow(
    clean_jetstream: str,
) -> None:
    nc = await nats.connect(clean_jetstream)
    book = WatchedPolicyBook()
    try:
        kv = await ensure_routing_policy_bucket(nc.jetstream())
        await kv.put("copro-a", EDGE_ONLY.model_dump_json().encode())
        await book.follow(nc.jetstream())
        assert book.policy_of("copro-a") == EDGE_ONLY  # loaded before follow() returned
        assert book.policy_of("copro-b") is None and book.policy_of(None) is None
        await kv.put("copro-b", RoutingPreference(policy="fastest").model_dump_json().encode())
        await kv.delete("copro-a")

        async def followed() -> bool:
            return book.policy_of("copro-a") is None and book.policy_of("copro-b") is not None

        await wait_until(followed, timeout=5)
    finally:
        await book.close()
        await nc.close()


async def test_a_deleted_bucket_keeps_the_last_policies_until_the_watch_is_back(clean_jetstream: str) -> None:
    nc = await nats.connect(clean_jetstream)
    book = WatchedPolicyBook(check_interval_s=0.5)
    try:
        js = nc.jetstream()
        kv = await ensure_routing_policy_bucket(js)
        await kv.put("copro-a", EDGE_ONLY.model_dump_json().encode())
        await book.follow(js)
        await js.delete_key_value(ROUTING_POLICY_BUCKET)
        assert book.policy_of("copro-a") == EDGE_ONLY  # never a silent fall back to the default
        # The watch comes back on a re-declared bucket and follows it again.
        kv = await ensure_routing_policy_bucket(js)

        async def refollowed() -> bool:
            await kv.put("copro-c", EDGE_ONLY.model_dump_json().encode())
            return book.policy_of("copro-c") == EDGE_ONLY

        await wait_until(refollowed, timeout=10)
    finally:
        await book.close()
        await nc.close()


async def test_the_routers_defaults_are_read_from_the_bucket_and_followed_and_never_taken_for_a_policy(
    clean_jetstream: str,
) -> None:
    """A gateway decides cloud chats by the routers' defaults as a router stored them; none stored
    (or deleted, or unreadable): none known, and the gateway leaves every chat to the routers."""
    nc = await nats.connect(clean_jetstream)
    book = WatchedPolicyBook()
    try:
        js = nc.jetstream()
        kv = await ensure_routing_policy_bucket(js)
        await book.follow(js)
        assert book.router_defaults() is None
        edge_only = RouterDefaults(policy="edge_only", grid_min_prompt_chars=5000, grid_min_max_tokens=900)
        await publish_router_defaults(js, edge_only)
        await wait_until(lambda: book.router_defaults() == edge_only, timeout=5)
        assert book.policy_of(ROUTER_DEFAULTS_KEY) is None  # no copro id has a `.`
        await kv.put(ROUTER_DEFAULTS_KEY, b'{"policy": "nowhere"}')
        await wait_until(lambda: book.router_defaults() is None, timeout=5)
        await publish_router_defaults(js, edge_only)
        await wait_until(lambda: book.router_defaults() == edge_only, timeout=5)
        await kv.delete(ROUTER_DEFAULTS_KEY)
        await wait_until(lambda: book.router_defaults() is None, timeout=5)
        # Stored before a book starts: known once `follow` returns.
        await publish_router_defaults(js, edge_only)
        late = WatchedPolicyBook()
        await late.follow(js)
        assert late.router_defaults() == edge_only
        await late.close()
    finally:
        await book.close()
        await nc.close()
