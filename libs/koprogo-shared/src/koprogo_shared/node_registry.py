"""Which edge nodes and cloud deployments are alive, from their heartbeats. Pure: the caller passes the clock.

The router uses it to choose a target, the gateway to say whether a model is
available now. A node or deployment is alive while its last heartbeat is younger than
three of its own intervals (one lost heartbeat is not a death); a cloud deployment
that is alive may still be unavailable (no API key, cooldown), and says why.

A heartbeat is believed only as far as its sender's identity goes (`heartbeat_refusal`): the
NATS server lets a node publish on `koprogo.nodes.heartbeat.<its own id>` alone, so the body
must name that id (`leaving` included), and with a node roster (`koprogo_shared.node_roster`)
its models and pools must be among those its key was minted for, and it may claim no less
power, no cleaner grid and no renewable supply than its operator declared. The public key it
announces for its grid signatures (`NodeHeartbeat.public_key`), when it names one, must be the
roster's key for that node (docs/grid-trust.md): a node cannot have its reports checked against
a key of its choosing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from koprogo_shared import subjects
from koprogo_shared.co2 import CloudFootprint
from koprogo_shared.events import CloudDeploymentStatus, NodeHeartbeat
from koprogo_shared.node_roster import Roster

MISSED_HEARTBEATS_BEFORE_DEAD = 3


@dataclass(frozen=True, slots=True)
class EdgeCandidate:
    node_id: str
    models: tuple[str, ...]
    in_flight: int
    capacity: int
    tokens_per_second: float
    power_watts: float
    intensity_g_per_kwh: float
    renewable_attested: bool
    seen_at: float
    context_length: int | None = None
    # The generation controls the node honours (koprogo_shared.generation.Feature).
    features: frozenset[str] = frozenset()
    # The edge pools it takes work from (`subjects.SHARED_POOL`, `subjects.copro_pool`).
    pools: frozenset[str] = frozenset({subjects.SHARED_POOL})
    # The grid task types it runs (empty: chat only).
    task_types: frozenset[str] = frozenset()
    # It takes requests a gateway routed to its pools and model (`NodeHeartbeat.takes_routed_requests`).
    takes_routed_requests: bool = False

    @property
    def load(self) -> float:
        return self.in_flight / self.capacity


@dataclass(frozen=True, slots=True)
class CloudCandidate:
    deployment: str
    provider: str
    models: tuple[str, ...]
    available: bool
    unavailable_reason: str | None
    footprint: CloudFootprint
    typical_latency_ms: float
    region: str | None
    features: frozenset[str] = frozenset()
    # Its workers take requests a gateway routed to it (`CloudDeploymentStatus.takes_routed_requests`).
    takes_routed_requests: bool = False


def heartbeat_refusal(subject: str, beat: NodeHeartbeat, roster: Roster | None) -> str | None:
    """Why a heartbeat heard on `subject` is not to be believed, or None when it may be.

    Without a roster (a NATS server without keys, where any client may say anything) only
    the subject is checked.
    """
    if subject != subjects.node_heartbeat(beat.node_id):
        return "node_id_not_its_subject"
    if roster is None:
        return None
    grant = roster.get(beat.node_id)
    if grant is None:
        return "node_not_in_roster"
    if beat.public_key is not None and grant.public_key is not None and beat.public_key != grant.public_key:
        return "key_not_in_roster"
    if beat.leaving:
        return None
    if not set(beat.models) <= grant.models:
        return "model_not_granted"
    if not set(beat.pools) <= grant.pools:
        return "pool_not_granted"
    declared = grant.footprint
    if (
        beat.power_watts < declared.power_watts
        or beat.intensity_g_per_kwh < declared.intensity_g_per_kwh
        or (beat.renewable_attested and not declared.renewable_attested)
    ):
        # Claiming worse than declared is allowed (a dirtier hour); better never is.
        return "footprint_not_declared"
    return None


class NodeRegistry:
    def __init__(self, roster: Callable[[], Roster | None] = lambda: None) -> None:
        """`roster`: the grants of the nodes' keys, read at each heartbeat (None: no roster)."""
        self._roster = roster
        self._nodes: dict[str, tuple[EdgeCandidate, float]] = {}
        self._cloud: dict[str, tuple[CloudCandidate, float]] = {}
        # When each node heard since start (and not gone on purpose) is due to be seen dead: unlike
        # `_nodes`, a node that stopped beating stays here, so an operator sees it down.
        self._expiry: dict[str, float] = {}

    def heard(self, subject: str, beat: NodeHeartbeat, now: float) -> str | None:
        """Take a heartbeat heard on `subject`; the reason it was refused, or None when taken."""
        refusal = heartbeat_refusal(subject, beat, self._roster())
        if refusal is not None:
            return refusal
        if beat.leaving:
            self.forget(beat.node_id)
        else:
            self.observe(beat, now)
        return None

    def observe_cloud(self, status: CloudDeploymentStatus, now: float) -> None:
        candidate = CloudCandidate(
            deployment=status.deployment,
            provider=status.provider,
            models=tuple(status.models),
            available=status.available,
            unavailable_reason=status.unavailable_reason,
            footprint=CloudFootprint(status.wh_per_1k_tokens, status.intensity_g_per_kwh),
            typical_latency_ms=status.typical_latency_ms,
            region=status.region,
            features=frozenset(status.features),
            takes_routed_requests=status.takes_routed_requests,
        )
        self._cloud[status.deployment] = (candidate, now + status.interval_s * MISSED_HEARTBEATS_BEFORE_DEAD)

    def cloud(self, now: float) -> list[CloudCandidate]:
        """Every cloud deployment heard from recently, available or not."""
        for name in [n for n, (_, expires) in self._cloud.items() if expires < now]:
            del self._cloud[name]
        return [candidate for candidate, _ in self._cloud.values()]

    def forget(self, node_id: str) -> None:
        """A node said it is leaving: stop routing to it now rather than after three heartbeats."""
        self._nodes.pop(node_id, None)
        self._expiry.pop(node_id, None)

    def observe(self, beat: NodeHeartbeat, now: float) -> None:
        candidate = EdgeCandidate(
            node_id=beat.node_id,
            models=tuple(beat.models),
            in_flight=beat.in_flight,
            capacity=beat.capacity,
            tokens_per_second=beat.tokens_per_second,
            power_watts=beat.power_watts,
            intensity_g_per_kwh=beat.intensity_g_per_kwh,
            renewable_attested=beat.renewable_attested,
            seen_at=now,
            context_length=beat.context_length,
            features=frozenset(beat.features),
            pools=frozenset(beat.pools),
            task_types=frozenset(beat.task_types),
            takes_routed_requests=beat.takes_routed_requests,
        )
        expires = now + beat.interval_s * MISSED_HEARTBEATS_BEFORE_DEAD
        self._nodes[beat.node_id] = (candidate, expires)
        self._expiry[beat.node_id] = expires

    def node(self, node_id: str, now: float) -> EdgeCandidate | None:
        """One node, while it is alive."""
        found = self._nodes.get(node_id)
        if found is None or found[1] < now:
            return None
        return found[0]

    def node_health(self, now: float) -> dict[str, bool]:
        """Every node heard since start and not gone on purpose: True while it is alive (as `alive`)."""
        return {node_id: expires >= now for node_id, expires in self._expiry.items()}

    def alive(self, now: float) -> list[EdgeCandidate]:
        for node_id in [n for n, (_, expires) in self._nodes.items() if expires < now]:
            del self._nodes[node_id]
        return [candidate for candidate, _ in self._nodes.values()]

    def serving(self, model: str, now: float) -> list[EdgeCandidate]:
        return [c for c in self.alive(now) if model in c.models]

    def edge_contexts(self, now: float) -> dict[str, int | None]:
        """Each model a live edge node serves, with the smallest context a node serving it declared."""
        found: dict[str, int | None] = {}
        for node in self.alive(now):
            for model in node.models:
                known = [c for c in (found.get(model), node.context_length) if c is not None]
                found[model] = min(known) if known else None
        return found

    def model_features(self, now: float) -> dict[str, set[str]]:
        """Per model served now, the controls at least one live target serving it honours."""
        found: dict[str, set[str]] = {}
        for node in self.alive(now):
            for model in node.models:
                found.setdefault(model, set()).update(node.features)
        for dep in self.cloud(now):
            if dep.available:
                for model in dep.models:
                    found.setdefault(model, set()).update(dep.features)
        return found

    def available_models(self, now: float) -> set[str]:
        """Models a live edge node or an available cloud deployment serves now."""
        edge = {m for c in self.alive(now) for m in c.models}
        return edge | {m for c in self.cloud(now) if c.available for m in c.models}
