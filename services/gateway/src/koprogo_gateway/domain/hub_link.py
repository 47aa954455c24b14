"""Whether this gateway's site reaches the hub (issue 18, docs/building-offline.md).

A hub gateway is the hub: its link is always up. A building's gateway reads its own nats-server's
leaf connections (`/leafz`): one or more means the leaf link to the hub is up, none that it is
down, and a monitoring endpoint that cannot be read leaves the link unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

Site = Literal["hub", "building"]


class HubLink(StrEnum):
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class LinkState:
    """The link as last observed, and when it last changed (None: never changed since start)."""

    link: HubLink
    since: datetime | None = None


def link_of(leaf_connections: int | None) -> HubLink:
    """The link a building's nats-server shows: `leaf_connections` from `/leafz`, None when unreadable."""
    if leaf_connections is None:
        return HubLink.UNKNOWN
    return HubLink.UP if leaf_connections > 0 else HubLink.DOWN


def observe(state: LinkState, link: HubLink, now: datetime) -> LinkState:
    """`state` after seeing `link` at `now`: unchanged when the link is the same, else changed since `now`."""
    return state if link is state.link else LinkState(link, now)
