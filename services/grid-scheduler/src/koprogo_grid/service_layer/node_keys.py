"""Who the grid's nodes are: each node's owner and the key its reports must be signed with (the
roster's, else the one pinned from its first heartbeat and stored in the trust book), and the nodes
alive now with their owners (`NodeKeys.live`, for `TaskBoard.shortfall`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from koprogo_grid.domain.board import TaskBoard
from koprogo_grid.domain.nodes import LiveNode
from koprogo_grid.domain.trust import NodeStanding, TrustBook
from koprogo_grid.service_layer.ports import NodeStandingStore
from koprogo_shared.node_roster import NodeGrant, Roster

log = logging.getLogger(__name__)

# (node id, task types, pools) of each node alive now.
LiveNodes = Callable[[], Iterable[tuple[str, frozenset[str], frozenset[str]]]]


class NodeKeys:
    """The `GridScheduler`'s nodes: owners and keys. Its state is the scheduler's (set in its constructor)."""

    board: TaskBoard
    trust: TrustBook
    live_nodes: LiveNodes | None
    _roster: Callable[[], Roster | None]
    _standings: NodeStandingStore
    _monotonic: Callable[[], float]
    _started_mono: float
    _trust_lock: asyncio.Lock
    _unsaved_keys: dict[str, NodeStanding]
    _saving: set[asyncio.Task[None]]

    def _grant(self, node_id: str) -> NodeGrant | None:
        roster = self._roster()
        return None if roster is None else roster.get(node_id)

    def owner_of(self, node_id: str) -> str:
        grant = self._grant(node_id)
        return node_id if grant is None else grant.owner_of(node_id)

    def node_key(self, node_id: str) -> str | None:
        """The key a node's reports must be signed with: the roster's, else the one pinned for it."""
        grant = self._grant(node_id)
        if grant is not None and grant.public_key is not None:
            return grant.public_key
        return self.trust.pinned_key(node_id)

    def heard_key(self, node_id: str, public_key: str | None) -> str | None:
        """A heartbeat (believed otherwise) names `public_key`: why it is refused, or None.

        With a roster key the announced one must be it; without, the first announced is pinned
        (stored in the trust book) and another one later is refused.
        """
        if public_key is None:
            return None
        grant = self._grant(node_id)
        if grant is not None and grant.public_key is not None:
            return None if grant.public_key == public_key else "key_not_in_roster"
        standing, refusal = self.trust.pin_key(node_id, self.owner_of(node_id), public_key)
        if standing is not None:
            self.trust.put(standing)
            self._unsaved_keys[node_id] = standing
            saving = asyncio.get_running_loop().create_task(self._save_keys())
            self._saving.add(saving)
            saving.add_done_callback(self._saving.discard)
            log.info("node %s: pinned its public key %s", node_id, public_key)
        return refusal

    async def _save_keys(self) -> None:
        async with self._trust_lock:
            await self._save_pinned()

    async def _save_pinned(self) -> None:
        for node_id in list(self._unsaved_keys):
            # The latest standing: a judgment may have changed it since the key was pinned.
            standing = self.trust.get(node_id)
            if standing is None:
                continue
            try:
                await self._standings.save(standing)
            except Exception as exc:
                log.warning("node %s: its pinned key is not stored yet (%r)", node_id, exc)
                return
            self._unsaved_keys.pop(node_id, None)

    def live(self) -> list[LiveNode] | None:
        """The nodes alive now with their owners, or None when not known (no `live_nodes`, or the
        scheduler started less than `owner_wait_s` ago: nodes are still announcing themselves)."""
        if self.live_nodes is None:
            return None
        if self._monotonic() - self._started_mono < self.board.rules.owner_wait_s:
            return None
        return [
            LiveNode(node_id, self.owner_of(node_id), frozenset(task_types), frozenset(pools))
            for node_id, task_types, pools in self.live_nodes()
        ]
