"""The trust book: each grid node's standing, earned by valid results and lost by wrong ones. Pure.

Adaptive replication (BOINC, docs/grid-trust.md): a node is untrusted until `trust_after` of its
results in a row were valid (in an accepted quorum); then its tasks are only spot-checked. A
result that disagrees with an accepted quorum (`caught_wrong`) or a report refused by the
signature checks (`bad_signature`) untrusts it at once and its run starts again; an implausible
energy attestation (`implausible_attestation`) restarts its run without untrusting it.

The book also pins each node's public key when there is no node roster: the first key a node
announces is the one its reports are checked against, and a different one later is refused.

Each change returns the node's new `NodeStanding`, carrying the `NodeTrustChanged` event it
produced in its `outbox`: the service layer stores the standing, then publishes the outbox (the
event's id is derived from the task and the reason, so publishing again after a restart is
harmless). A judgment is counted once: its key is kept in `counted` (the last `COUNTED_KEPT`),
so a report redelivered before its task's state was stored does not count twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from koprogo_shared import subjects
from koprogo_shared.task_events import NodeTrustChanged, NodeTrustReason, task_event_id

SOURCE = "koprogo-grid-scheduler"
COUNTED_KEPT = 256

JudgedVerdict = Literal["valid", "invalid", "unchecked", "flagged", "refused"]


class NodeStanding(BaseModel):
    """One node in the trust book (stored as JSON in `subjects.GRID_NODES_BUCKET`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str
    owner: str
    public_key: str | None = None
    trusted: bool = False
    valid_streak: int = Field(default=0, ge=0)
    validated: int = Field(default=0, ge=0)
    invalid: int = Field(default=0, ge=0)
    refused: int = Field(default=0, ge=0)
    flagged: int = Field(default=0, ge=0)
    # When it last lost its trust by being wrong (re-checks look at what it delivered before).
    caught_at: datetime | None = None
    # Judgments already counted ("<task>:<attempt>:<verdict>"), the last COUNTED_KEPT.
    counted: list[str] = Field(default_factory=list)
    # The events of its last change, published after it is stored.
    outbox: list[tuple[str, str]] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Judgment:
    """What a task's verification concluded about one replica of one node."""

    node_id: str
    owner: str
    verdict: JudgedVerdict
    task_id: str
    attempt: int
    copro_id: str | None = None


class TrustBook:
    """Every node's standing, in memory; the service layer stores each change before publishing it."""

    def __init__(self, trust_after: int) -> None:
        self.trust_after = trust_after
        self._nodes: dict[str, NodeStanding] = {}

    def load(self, standings: Iterable[NodeStanding]) -> None:
        for standing in standings:
            self._nodes[standing.node_id] = standing

    def put(self, standing: NodeStanding) -> None:
        self._nodes[standing.node_id] = standing

    def get(self, node_id: str) -> NodeStanding | None:
        return self._nodes.get(node_id)

    def standings(self) -> Iterator[NodeStanding]:
        return iter(list(self._nodes.values()))

    def is_trusted(self, node_id: str) -> bool:
        standing = self._nodes.get(node_id)
        return standing is not None and standing.trusted

    def pinned_key(self, node_id: str) -> str | None:
        standing = self._nodes.get(node_id)
        return None if standing is None else standing.public_key

    def pin_key(self, node_id: str, owner: str, public_key: str) -> tuple[NodeStanding | None, str | None]:
        """Pin `public_key` as the node's key when it has none yet.

        Returns (the standing to store, or None when nothing changed; the refusal, or None).
        """
        standing = self._nodes.get(node_id)
        if standing is not None and standing.public_key is not None:
            if standing.public_key != public_key:
                return None, "key_not_pinned"
            return None, None
        base = standing or NodeStanding(node_id=node_id, owner=owner)
        return base.model_copy(update={"public_key": public_key}), None

    def judge(self, judgment: Judgment, now: datetime) -> NodeStanding | None:
        """The node's standing after `judgment`, or None when it changes nothing (or was counted)."""
        j = judgment
        key = f"{j.task_id}:{j.attempt}:{j.verdict}"
        before = self._nodes.get(j.node_id) or NodeStanding(node_id=j.node_id, owner=j.owner)
        if key in before.counted or j.verdict == "unchecked":
            return None
        counted = [*before.counted, key][-COUNTED_KEPT:]
        reason: NodeTrustReason | None = None
        changes: dict[str, object] = {"counted": counted, "outbox": []}
        if j.verdict == "valid":
            streak = before.valid_streak + 1
            changes |= {"validated": before.validated + 1, "valid_streak": streak}
            if not before.trusted and streak >= self.trust_after:
                changes["trusted"] = True
                reason = "earned"
        elif j.verdict == "invalid":
            changes |= {"invalid": before.invalid + 1, "valid_streak": 0, "trusted": False, "caught_at": now}
            reason = "caught_wrong"
        elif j.verdict == "refused":
            changes |= {"refused": before.refused + 1, "valid_streak": 0, "trusted": False, "caught_at": now}
            reason = "bad_signature"
        else:  # flagged
            changes |= {"flagged": before.flagged + 1, "valid_streak": 0}
            reason = "implausible_attestation"
        after = before.model_copy(update=changes)
        if reason is not None:
            event = NodeTrustChanged(
                id=task_event_id(j.task_id, f"trust:{j.node_id}:{reason}"),
                source=SOURCE,
                copro_id=j.copro_id,
                time=now,
                node_id=j.node_id,
                owner=after.owner,
                trusted=after.trusted,
                reason=reason,
                task_id=j.task_id,
                valid_streak=after.valid_streak,
                validated=after.validated,
                invalid=after.invalid,
            )
            after = after.model_copy(
                update={"outbox": [(subjects.grid_node_trust(j.node_id), event.model_dump_json())]}
            )
        return after
