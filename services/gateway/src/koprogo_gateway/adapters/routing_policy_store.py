"""The copros' routing policies: one `RoutingPreference` per copro, shared by every gateway and the router.

RoutingPolicyStoreError
 └── RoutingPolicyStoreUnavailableError the store did not answer, refused the write, or holds no valid policy

The real store is the NATS JetStream key-value bucket ROUTING_POLICY_BUCKET, keyed by
`routing_policy_key(copro_id)`, each value a RoutingPreference as JSON; the router reads the
same bucket, so a policy is in force wherever it was written from.
"""

from __future__ import annotations

import abc
import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue
from pydantic import ValidationError

from koprogo_shared.events import RoutingPreference
from koprogo_shared.subjects import routing_policy_key

log = logging.getLogger(__name__)


class RoutingPolicyStoreError(Exception):
    pass


class RoutingPolicyStoreUnavailableError(RoutingPolicyStoreError):
    pass


class RoutingPolicyStore(abc.ABC):
    """Keys are copro ids; an id `routing_policy_key` refuses raises ValueError before any I/O."""

    @abc.abstractmethod
    async def get(self, copro_id: str) -> RoutingPreference | None:
        """The copro's policy, or None when it has none (the deployment default applies)."""

    @abc.abstractmethod
    async def put(self, copro_id: str, preference: RoutingPreference) -> RoutingPreference:
        """Store the copro's policy, replacing any earlier one; returns what was stored."""

    @abc.abstractmethod
    async def delete(self, copro_id: str) -> None:
        """Forget the copro's policy (the deployment default applies again); nothing to forget is fine."""


_UNAVAILABLE = (nats.errors.Error, TimeoutError, OSError)


class NatsKvRoutingPolicyStore(RoutingPolicyStore):
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, copro_id: str) -> RoutingPreference | None:
        key = routing_policy_key(copro_id)
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # KeyDeletedError too: a reset policy
            return None
        except _UNAVAILABLE as exc:
            raise RoutingPolicyStoreUnavailableError(
                f"reading the routing policy failed: {type(exc).__name__}"
            ) from exc
        if entry.value is None:
            return None
        try:
            return RoutingPreference.model_validate_json(entry.value)
        except ValidationError:
            raise RoutingPolicyStoreUnavailableError(
                f"the stored routing policy of copro {copro_id} is not a valid policy"
            ) from None

    async def put(self, copro_id: str, preference: RoutingPreference) -> RoutingPreference:
        key = routing_policy_key(copro_id)
        try:
            await self.kv.put(key, preference.model_dump_json(exclude_none=True).encode())
        except _UNAVAILABLE as exc:
            raise RoutingPolicyStoreUnavailableError(
                f"storing the routing policy failed: {type(exc).__name__}"
            ) from exc
        return preference

    async def delete(self, copro_id: str) -> None:
        key = routing_policy_key(copro_id)
        try:
            await self.kv.delete(key)
        except _UNAVAILABLE as exc:
            raise RoutingPolicyStoreUnavailableError(
                f"resetting the routing policy failed: {type(exc).__name__}"
            ) from exc


class FakeRoutingPolicyStore(RoutingPolicyStore):
    """In memory; `unavailable` makes every call fail as an unreachable store does."""

    def __init__(self) -> None:
        self.policies: dict[str, RoutingPreference] = {}
        self.unavailable = False

    async def _enter(self, copro_id: str) -> str:
        await asyncio.sleep(0)
        key = routing_policy_key(copro_id)
        if self.unavailable:
            raise RoutingPolicyStoreUnavailableError("fake store is down")
        return key

    async def get(self, copro_id: str) -> RoutingPreference | None:
        return self.policies.get(await self._enter(copro_id))

    async def put(self, copro_id: str, preference: RoutingPreference) -> RoutingPreference:
        self.policies[await self._enter(copro_id)] = preference
        return preference

    async def delete(self, copro_id: str) -> None:
        self.policies.pop(await self._enter(copro_id), None)
