"""What each edge node's NATS key was minted for: its models and its pools (the node roster).

`koprogo up`, `koprogo nats-config`, `koprogo nats-node-key` and `koprogo node join` mint a
node's key with the permissions of its models and pools (`koprogo_cli.nats_auth`) and write
the same grant into the roster file beside the keys (`<keys>/roster.json`). The NATS server
holds the permissions but tells no subscriber who published a message, so the router reads
the roster to check what a heartbeat claims against what its sender's key may do:

    {"nodes": {"<node id>": {"models": ["<model id>", ...], "pools": ["shared" | "copro-<id>", ...]}}}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from koprogo_shared.subjects import SHARED_POOL

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeGrant:
    """The models a node's key may pull work for, and the pools it may pull it from."""

    models: frozenset[str]
    pools: frozenset[str] = frozenset({SHARED_POOL})


Roster = Mapping[str, NodeGrant]


def parse_roster(text: str) -> dict[str, NodeGrant]:
    """The grants of a roster file's text; ValueError when it is not one."""
    try:
        nodes = json.loads(text)["nodes"]
        return {
            str(node_id): NodeGrant(
                frozenset(str(m) for m in grant["models"]),
                frozenset(str(p) for p in grant.get("pools") or [SHARED_POOL]),
            )
            for node_id, grant in nodes.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            'not a node roster: expected {"nodes": {id: {"models": [...], "pools": [...]}}}'
        ) from None


def render_roster(grants: Mapping[str, NodeGrant]) -> str:
    nodes = {
        node_id: {"models": sorted(grant.models), "pools": sorted(grant.pools)}
        for node_id, grant in sorted(grants.items())
    }
    return json.dumps({"nodes": nodes}, indent=2) + "\n"


class RosterFile:
    """The roster at `path`, read again whenever the file changes (a node joined meanwhile).

    A missing file admits no node; an unreadable one keeps the last good roster (logged).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._grants: dict[str, NodeGrant] = {}

    def __call__(self) -> Roster:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._grants = parse_roster(self.path.read_text())
            except (OSError, ValueError) as exc:
                log.error("node roster %s: %s (keeping the last one read)", self.path, exc)
        return self._grants
