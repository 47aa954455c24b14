"""The copros' routing policies, as a router or a gateway sees them: a local copy kept by watching the bucket.

Looking a policy up is on the hot path, so it reads memory; the watch keeps the copy
current within milliseconds of an admin's change. The router takes no request before the
watch has delivered every stored policy (`follow` returns only then): an `edge_only` copro
must never be routed by a default it does not know it has.

The same bucket holds the routers' own defaults (`RouterDefaults`, key
`subjects.ROUTER_DEFAULTS_KEY`), written by each router at start (`publish_router_defaults`):
a gateway routes a chat itself only with them, so that it decides as the routers do (a router
set to `DEFAULT_ROUTING_POLICY=edge_only` must never see its gateways send a copro's chat to a
cloud deployment by another default).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from koprogo_shared.events import RoutingPolicyName, RoutingPreference
from koprogo_shared.kv_snapshot import initial_entries
from koprogo_shared.subjects import ROUTER_DEFAULTS_KEY, ROUTING_POLICY_BUCKET, routing_policy_key

log = logging.getLogger(__name__)
_BUCKET_STREAM = f"KV_{ROUTING_POLICY_BUCKET}"


class RouterDefaults(BaseModel):
    """What decides a chat in a router besides its copro's policy (`RouterSettings`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    policy: RoutingPolicyName  # DEFAULT_ROUTING_POLICY
    grid_min_prompt_chars: int = Field(gt=0)  # GRID_MIN_PROMPT_CHARS
    grid_min_max_tokens: int = Field(gt=0)  # GRID_MIN_MAX_TOKENS


async def publish_router_defaults(js: JetStreamContext, defaults: RouterDefaults) -> None:
    """Store a router's defaults in the policies' bucket (raises when it cannot: a gateway must
    never go on deciding by the defaults of an earlier configuration)."""
    kv = await js.key_value(ROUTING_POLICY_BUCKET)
    await kv.put(ROUTER_DEFAULTS_KEY, defaults.model_dump_json().encode())


class PolicyBook(abc.ABC):
    @abc.abstractmethod
    def policy_of(self, copro_id: str | None) -> RoutingPreference | None:
        """The copro's default routing policy, or None when it has none (or names no copro)."""

    def router_defaults(self) -> RouterDefaults | None:
        """The routers' defaults as they stored them, None while none did (the router's own book
        is never asked: it has its settings)."""
        return None


class FakePolicyBook(PolicyBook):
    def __init__(
        self, policies: dict[str, RoutingPreference] | None = None, defaults: RouterDefaults | None = None
    ) -> None:
        self.policies = dict(policies or {})
        self.defaults = defaults

    def policy_of(self, copro_id: str | None) -> RoutingPreference | None:
        return self.policies.get(copro_id) if copro_id else None

    def router_defaults(self) -> RouterDefaults | None:
        return self.defaults


class WatchedPolicyBook(PolicyBook):
    def __init__(self, check_interval_s: float = 5.0) -> None:
        self._policies: dict[str, RoutingPreference] = {}
        self._defaults: RouterDefaults | None = None
        self._task: asyncio.Task[None] | None = None
        self.check_interval_s = check_interval_s

    def router_defaults(self) -> RouterDefaults | None:
        return self._defaults

    def policy_of(self, copro_id: str | None) -> RoutingPreference | None:
        if not copro_id:
            return None
        try:
            return self._policies.get(routing_policy_key(copro_id))
        except ValueError:
            return None  # an id that cannot be a key has no stored policy

    async def follow(self, js: JetStreamContext) -> None:
        """Load every stored policy, then keep following changes in the background."""
        loaded = await self._load_until_done(js)
        self._task = asyncio.create_task(self._follow_changes(js, loaded), name="routing-policies")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _load(self, js: JetStreamContext) -> tuple[KeyValue.KeyWatcher, object]:
        """Every stored policy, and a watch from there on; with the bucket's creation time."""
        # Declared before the router starts (`nats_connection.buckets_for_service`); a deleted
        # bucket is waited for, never declared again here (an empty one would look like no policies).
        kv = await js.key_value(ROUTING_POLICY_BUCKET)
        created = (await js.stream_info(_BUCKET_STREAM)).created
        watcher = await kv.watchall()
        # Every stored value before the first policy is believed (`kv_snapshot`: nats-py's
        # caught-up marker alone may come first under load, which read as "no policies").
        entries, complete = await initial_entries(kv, watcher, timeout_s=30)
        if not complete:
            await watcher.stop()
            raise TimeoutError("the routing-policy bucket's values did not all come within 30 s")
        loaded: dict[str, RoutingPreference] = {}
        self._defaults = None  # read again below, if still stored
        for entry in entries:
            self._apply(entry, loaded)
        self._policies = loaded
        log.info("routing policies loaded: %d copro(s) with their own", len(loaded))
        return watcher, created

    async def _follow_changes(self, js: JetStreamContext, first: tuple[KeyValue.KeyWatcher, object]) -> None:
        watcher, created = first
        while True:
            applying = asyncio.create_task(self._apply_changes(watcher))
            try:
                # A deleted (or re-created) bucket leaves the watch silent rather than failing:
                # look at the bucket itself every few seconds.
                while not applying.done():
                    await asyncio.wait({applying}, timeout=self.check_interval_s)
                    if applying.done() or (await js.stream_info(_BUCKET_STREAM)).created != created:
                        break
            except asyncio.CancelledError:
                applying.cancel()
                raise
            except Exception as exc:
                log.warning("routing-policy bucket unreadable (%r)", exc)
            applying.cancel()
            # The last known policies stay in force (never a silent fall back to the default)
            # until the watch is back on the bucket.
            log.warning("routing-policy watch lost; following the bucket again")
            with contextlib.suppress(Exception):
                await watcher.stop()
            watcher, created = await self._load_until_done(js)

    async def _load_until_done(self, js: JetStreamContext) -> tuple[KeyValue.KeyWatcher, object]:
        """`_load`, again every second while the bucket cannot be read (deleted meanwhile, NATS away)."""
        while True:
            try:
                return await self._load(js)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("routing policies cannot be loaded yet (%r); retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _apply_changes(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply(entry, self._policies)

    def _apply(self, entry: KeyValue.Entry, policies: dict[str, RoutingPreference]) -> None:
        value = None if entry.operation in ("DEL", "PURGE") else entry.value
        if entry.key == ROUTER_DEFAULTS_KEY:
            self._defaults = _router_defaults(value) if value else None
            return
        if not value:
            policies.pop(entry.key, None)
            return
        try:
            policies[entry.key] = RoutingPreference.model_validate_json(value)
        except ValidationError as exc:
            # Only the gateway writes here, after validating; keep the last good policy.
            log.error(
                "ignoring an unreadable routing policy for %s: %d error(s)", entry.key, exc.error_count()
            )


def _router_defaults(value: bytes) -> RouterDefaults | None:
    try:
        return RouterDefaults.model_validate_json(value)
    except ValidationError as exc:
        # Unreadable: decide nothing by it (a gateway then leaves every chat to the routers).
        log.error("ignoring the routers' unreadable defaults: %d error(s)", exc.error_count())
        return None
