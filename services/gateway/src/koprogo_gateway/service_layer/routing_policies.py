"""Use cases: read, set and reset a copro's routing policy, with who may do which."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from koprogo_gateway.adapters.routing_policy_store import (
    RoutingPolicyStore,
    RoutingPolicyStoreUnavailableError,
)
from koprogo_gateway.domain.access import Caller, require_admin, require_copro_member
from koprogo_gateway.domain.errors import RoutingPolicyUnavailableError
from koprogo_gateway.domain.routing_policy import CoproRoutingPolicyPublic, checked_copro_id
from koprogo_shared.events import RoutingPreference

log = logging.getLogger(__name__)


def _unavailable(exc: RoutingPolicyStoreUnavailableError) -> RoutingPolicyUnavailableError:
    return RoutingPolicyUnavailableError(
        f"the routing-policy store (NATS JetStream) cannot be reached; retry shortly ({exc})",
        headers={"Retry-After": "1"},
    )


@dataclass
class CoproRoutingPolicies:
    store: RoutingPolicyStore

    async def read(self, caller: Caller, copro_id: str) -> CoproRoutingPolicyPublic:
        """The copro's policy for its residents and admins (404 for anyone else), or the default."""
        require_copro_member(caller, copro_id)
        try:
            stored = await self.store.get(checked_copro_id(copro_id))
        except RoutingPolicyStoreUnavailableError as exc:
            raise _unavailable(exc) from exc
        return CoproRoutingPolicyPublic.of(copro_id, stored)

    async def set(
        self, caller: Caller, copro_id: str, preference: RoutingPreference
    ) -> CoproRoutingPolicyPublic:
        """Store the copro's policy (admins only, 403 otherwise)."""
        require_admin(caller)
        try:
            stored = await self.store.put(checked_copro_id(copro_id), preference)
        except RoutingPolicyStoreUnavailableError as exc:
            raise _unavailable(exc) from exc
        log.info("routing policy of copro %s set by %s: %s", copro_id, caller.user_id, stored)
        return CoproRoutingPolicyPublic.of(copro_id, stored)

    async def reset(self, caller: Caller, copro_id: str) -> CoproRoutingPolicyPublic:
        """Forget the copro's policy (admins only); the deployment default applies again."""
        require_admin(caller)
        try:
            await self.store.delete(checked_copro_id(copro_id))
        except RoutingPolicyStoreUnavailableError as exc:
            raise _unavailable(exc) from exc
        log.info("routing policy of copro %s reset by %s", copro_id, caller.user_id)
        return CoproRoutingPolicyPublic.of(copro_id, None)
