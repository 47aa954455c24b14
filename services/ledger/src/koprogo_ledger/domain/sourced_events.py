"""Which events the ledger believes when they reached the hub's KOPROGO_EVENTS by sourcing: a pure rule.

A building's events reach the hub by JetStream sourcing, and the hub stores a sourced message
whatever its subject (docs/building-offline.md, "Known gap"): no publish permission of the hub was
checked for it, so the subject, which `records.forged_sender` and `task_records.forged_task_sender`
trust as the sender's, says nothing about who made it.
"""

from __future__ import annotations

from koprogo_shared.events import (
    ChatCompleted,
    ChatDelivered,
    ChatFailed,
    ChatRequested,
    ChatsDelivered,
    Event,
    InferenceAttemptFailed,
)
from koprogo_shared.leaf_site import BUILDING_EVENT_KINDS, BUILDING_INBOX_PREFIX, is_building_event
from koprogo_shared.subjects import subject_token

# The bodies each building kind may carry: a sourced message's subject was checked by no
# permission of the hub's, so its body must agree with it before anything is believed.
_BODY_OF_KIND: dict[str, tuple[type[Event], ...]] = {
    "chat.requested": (ChatRequested,),
    "chat.completed": (ChatCompleted,),
    "chat.failed": (ChatFailed,),
    # Grouped since issue 17; a building's gateway of an older release stores one per delivery.
    "chat.delivered": (ChatsDelivered, ChatDelivered),
    "inference.attempt_failed": (InferenceAttemptFailed,),
}
assert set(_BODY_OF_KIND) == set(BUILDING_EVENT_KINDS)

# The dead letter's reason starts with it, so an operator can count and find these.
SOURCED_KIND_REFUSED = "sourced_kind_refused"


def refused_sourced_kind(subject: str, stream_source: str | None) -> str | None:
    """Why a sourced event must not be projected, else None.

    `stream_source`: the message's `Nats-Stream-Source` header (None when it was published into the
    stream directly, which the hub's permissions did check). A building makes only the kinds of
    `leaf_site.BUILDING_EVENT_KINDS`; anything else that came by sourcing (a scheduler's task
    decision, a node's trust, a user's erasure request) is refused, whatever its body says.
    """
    if stream_source is None or is_building_event(subject):
        return None
    # The header reads `<stream> <sequence> <filter> <destination> ...`: its stream names the sender.
    stream = stream_source.split(" ", 1)[0][:80]
    return (
        f"{SOURCED_KIND_REFUSED}: {subject} was sourced from stream {stream!r}, and a building "
        f"sends only {', '.join(BUILDING_EVENT_KINDS)}"
    )


def refused_sourced_body(subject: str, stream_source: str | None, event: Event) -> str | None:
    """Why a sourced event's body must not be believed, else None (not sourced: None).

    The subject passed `refused_sourced_kind`; the body must be of that kind (an erasure request
    or a grid decision carried on a chat subject is refused), for the subject's copro, and that
    copro must be the building's whose inbox it came through (`KOPROGO_BUILDING_<copro>`).
    """
    if stream_source is None:
        return None
    tokens = subject.split(".")
    kind, copro_token = ".".join(tokens[2:4]), tokens[4] if len(tokens) > 4 else ""
    wanted = _BODY_OF_KIND.get(kind)
    if wanted is None or not isinstance(event, wanted):
        return f"{SOURCED_KIND_REFUSED}: a {type(event).__name__} carried on {subject}"
    if subject_token(getattr(event, "copro_id", None)) != copro_token:
        return f"{SOURCED_KIND_REFUSED}: {subject} carries an event of another copro"
    stream = stream_source.split(" ", 1)[0]
    if stream.startswith(BUILDING_INBOX_PREFIX) and stream.removeprefix(BUILDING_INBOX_PREFIX) != copro_token:
        return f"{SOURCED_KIND_REFUSED}: {subject} came through {stream[:80]}, another building's inbox"
    return None


def awaits_other_site(age_s: float, wait_s: float) -> bool:
    """Whether an event whose predecessor the ledger does not hold yet keeps waiting for it (NAKed
    without a delivery limit) rather than being dead-lettered after its deliveries: while it is
    younger than `wait_s`.

    A building's cloud chat is requested in the building and answered at the hub: its answer is
    stored at the hub at once, its request only when the building's stream reaches the hub's by
    sourcing, which takes seconds online and the whole partition when the line drops right
    after the answer. The request exists (the building stored it before its router sent the
    work), so the answer waits for it rather than be dead-lettered after ~40 s.
    """
    return age_s < wait_s
