"""A building's NATS: a leaf node of the hub with its own JetStream domain (docs/building-offline.md).

The building's services talk to their own nats-server, which keeps their streams on its disk
(`sync_interval: always`) and holds a leaf connection to the hub. Nothing here copies a message:

* the building's facts are stored in its own KOPROGO_EVENTS (domain `building-<copro>`); the hub's
  inbox `KOPROGO_BUILDING_<copro>` *sources* that stream through the leaf connection
  (`$JS.building-<copro>.API`), and the hub's KOPROGO_EVENTS sources the inbox with filters the
  hub's own server applies (the building's kinds, its copro). Each stream remembers the last
  sequence it took (`Nats-Stream-Source`) and resumes there after a cut or a restart of either
  side; an event that also reached the hub another way inside the de-dup window is dropped by its
  `Nats-Msg-Id`.
* Events never travel over the leaf connection as plain publishes: the building's remote refuses
  to export or import `koprogo.events.>`, and the hub's permissions for the building's key say
  what else may cross (`leaf_link_permissions`): its own copro's cloud work and chat cancels out,
  the hub's answers to its gateway, the cloud heartbeats and the acks under its inbox root in.

(nats-server applies a leaf connection's user permissions from the hub's side: what the user may
publish is what the hub accepts from the leaf, what it may subscribe is what the hub sends it.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from koprogo_shared import subjects
from koprogo_shared.subjects import (
    DEADLETTER_PREFIX,
    EDGE_WORK_ALL,
    EVENTS_ALL,
    EVENTS_STREAM,
    GRID_WORK_ALL,
    INBOX_ROOT,
    STREAMS,
    WORK_STREAM,
    StreamSpec,
)

# A copro id names the building's JetStream domain and subject tokens (as a copro pool does).
_COPRO_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Where a building's sourced events are delivered to the hub (the source's `deliver` prefix):
# its own subjects, so its hub key may publish there and nowhere else.
_LEAF_DELIVER_ROOT = "koprogo.leaf"
# The hub-local stream of each building (`building_inbox`).
BUILDING_INBOX_PREFIX = "KOPROGO_BUILDING_"
INBOX_MAX_AGE_S = 7 * 24 * 3600.0
INBOX_DUPLICATE_WINDOW_S = 120.0
INBOX_MAX_BYTES = 1024**3
# Every copro-bound event subject carries the copro as its fifth token
# (`koprogo.events.<kind>.<step>.<copro>[.…]`, see `subjects`).
_COPRO_TOKEN = 4
DEFAULT_RECONNECT_S = 1.0


class LeafSiteError(ValueError):
    """A copro id that cannot name a building, or a hub stream that cannot source it."""


def _checked(copro_id: str) -> str:
    if not _COPRO_ID.match(copro_id):
        raise LeafSiteError(f"copro id {copro_id!r}: use 1-64 letters, digits, '-' or '_'")
    return copro_id


def building_domain(copro_id: str) -> str:
    """The JetStream domain of a copro's building (unique per leaf: its API is `$JS.<domain>.API`)."""
    return f"building-{_checked(copro_id)}"


def building_api_prefix(copro_id: str) -> str:
    return f"$JS.{building_domain(copro_id)}.API"


def building_deliver_prefix(copro_id: str) -> str:
    return f"{_LEAF_DELIVER_ROOT}.{_checked(copro_id)}"


# The kinds of event a building makes, named one by one (`koprogo.events.<kind>.<step>`): its
# members' chats and its routers' attempts. Never the grid's task events, node trust or erasure
# requests, which the hub's services alone decide (a building runs no scheduler and no ledger).
BUILDING_EVENT_KINDS: tuple[str, ...] = (
    "chat.requested",
    "chat.completed",
    "chat.failed",
    "chat.delivered",
    "inference.attempt_failed",
)


def copro_event_filters(copro_id: str) -> tuple[str, ...]:
    """The event subjects of one copro's building: what the hub accepts from it (each kind of
    `BUILDING_EVENT_KINDS`, for this copro, with or without a node/cloud suffix)."""
    copro = _checked(copro_id)
    filters: list[str] = []
    for kind in BUILDING_EVENT_KINDS:
        head = f"koprogo.events.{kind}"
        assert len(head.split(".")) == _COPRO_TOKEN
        filters += [f"{head}.{copro}", f"{head}.{copro}.>"]
    return tuple(filters)


# Set by JetStream on every message a stream took from another by sourcing.
SOURCE_HEADER = "Nats-Stream-Source"


def made_at_another_site(headers: Mapping[str, str] | None) -> bool:
    """Whether a KOPROGO_EVENTS message reached this site by sourcing (a building's event at the
    hub): recorded and projected here, but decided where it was made (its router routed it, its
    workers answered it), so no service of this site acts on it again."""
    return bool(headers) and SOURCE_HEADER in (headers or {})


def is_building_event(subject: str) -> bool:
    """Whether a building may have made an event on `subject` (any copro): the ledger's check of
    what reached the hub by sourcing."""
    tokens = subject.split(".")
    return (
        len(tokens) > _COPRO_TOKEN
        and tokens[:2] == ["koprogo", "events"]
        and ".".join(tokens[2:_COPRO_TOKEN]) in BUILDING_EVENT_KINDS
    )


# What the building's remote refuses to send the hub as plain messages: its facts reach the hub
# by sourcing alone, and its local work and dead letters stay local.
LEAF_DENY_EXPORTS: tuple[str, ...] = (
    EVENTS_ALL,
    "koprogo.work.edge.>",
    "koprogo.work.grid.>",
    f"{DEADLETTER_PREFIX}.>",
)
# What it refuses to receive from the hub: other copros' facts, edge and grid work, dead letters.
# Not `koprogo.work.>`: nats-server then also withholds the building's cloud work from the hub
# (its JetStream publish got "no responders" with the hub's KOPROGO_WORK interested); the hub's
# cloud work never reaches a building all the same, its user may not receive it
# (`leaf_link_permissions`).
LEAF_DENY_IMPORTS: tuple[str, ...] = (
    EVENTS_ALL,
    "koprogo.work.edge.>",
    "koprogo.work.grid.>",
    f"{DEADLETTER_PREFIX}.>",
)


@dataclass(frozen=True, slots=True)
class LeafLinkPermissions:
    """The hub's permissions for a building's leaf connection (its user's `permissions`)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def building_gateway_id(copro_id: str) -> str:
    """The building's gateway id: the hub's answers to it travel on `koprogo.reply.<this>`."""
    return building_domain(copro_id)


def building_inbox_root(copro_id: str) -> str:
    """The inbox root of the building's services (`ServiceSettings.nats_inbox_root`): the hub's
    JetStream acknowledges the cloud work they send it there, and sends nothing else there."""
    return f"{INBOX_ROOT}.{building_domain(copro_id)}"


def leaf_link_permissions(copro_id: str) -> LeafLinkPermissions:
    """What the hub lets copro `copro_id`'s building send and receive (see the module docstring)."""
    gateway_reply = subjects.gateway_reply(building_gateway_id(copro_id))
    return LeafLinkPermissions(
        publish=(
            f"{building_deliver_prefix(copro_id)}.>",
            "$JSC.R.>",
            "$LDS.>",
            # Its members' cloud chats (its copro's only: the cloud worker checks the work names
            # the subject's copro), for the hub's cloud workers, and their cancels.
            f"{subjects.run_inference_cloud(_checked(copro_id), '_').rsplit('.', 1)[0]}.>",
            subjects.CHAT_CANCEL_ALL,
        ),
        subscribe=(
            f"{building_api_prefix(copro_id)}.>",
            "$JS.FC.>",
            "$LDS.>",
            # The hub's answers to its gateway, the cloud deployments' heartbeats (its router
            # chooses the cloud while it hears them), the acks of the work it sends.
            gateway_reply,
            f"{gateway_reply}.>",
            subjects.CLOUD_STATUS_ALL,
            f"{building_inbox_root(copro_id)}.>",
        ),
    )


def is_building_domain(domain: str | None) -> bool:
    return bool(domain) and (domain or "").startswith("building-")


def site_streams(domain: str | None) -> tuple[StreamSpec, ...]:
    """The KOPROGO_* streams of the site whose JetStream domain is `domain`: a building's
    KOPROGO_WORK keeps its own edge and grid work only, so that its cloud work reaches the hub's
    stream over the leaf link (and, the link cut, finds no stream: the router answers `offline`)."""
    if not is_building_domain(domain):
        return STREAMS
    return tuple(
        replace(spec, subjects=[EDGE_WORK_ALL, GRID_WORK_ALL]) if spec.name == WORK_STREAM else spec
        for spec in STREAMS
    )


@dataclass(frozen=True, slots=True)
class LeafSite:
    """The nats-server of one building: local clients on `host:port`, a leaf link to the hub."""

    copro_id: str
    store_dir: Path
    hub_urls: Sequence[str]  # nats-leaf://host:7422 of the hub's leaf listener(s)
    # The building's user seed at the hub (its `leaf_link_permissions`), written into the
    # configuration: nats-server takes a remote's nkey seed inline, so the file is kept 0600.
    hub_nkey_seed: str
    port: int = 4222
    host: str = "127.0.0.1"
    server_name: str = ""
    reconnect_s: float = DEFAULT_RECONNECT_S
    # The building's own clients' `authorization { ... }` block (koprogo_cli.nats_auth); empty: none.
    authorization: str = ""
    log_file: Path | None = None


HUB_DOMAIN = "hub"
LEAF_PING_INTERVAL_S = 10
LEAF_PING_MAX = 3
DEFAULT_LEAF_PORT = 7422


def render_hub_listener(host: str, port: int) -> str:
    """The hub's `leafnodes` block: where buildings' leaf links connect (their users and
    permissions are the server's `authorization` block, `leaf_link_permissions`)."""
    # `no_advertise`: a building keeps to the URL it was given (the hub's public address, or a
    # tunnel's); the addresses this server would advertise are its own view, often unreachable
    # from a building's line, and would let it go round a line the test cuts.
    return f"leafnodes {{\n  host: {json.dumps(host)}\n  port: {port}\n  no_advertise: true\n}}\n"


def render_leaf_remote(
    hub_urls: Sequence[str], hub_nkey_seed: str, reconnect_s: float = DEFAULT_RECONNECT_S
) -> str:
    """A building's `leafnodes` block: one remote to the hub with the building's seed (inline:
    the file holding it must be private), and the deny lists; before it, the server's ping
    settings (top-level), which decide how soon a silent line is noticed."""
    if not hub_urls:
        raise LeafSiteError("a building needs the hub's leaf URL (nats-leaf://host:7422)")
    for url in hub_urls:
        if not url.startswith(("nats-leaf://", "tls://", "ws://", "wss://")):
            raise LeafSiteError(f"hub leaf URL {url!r}: use nats-leaf://host:7422")
    urls = ", ".join(json.dumps(url) for url in hub_urls)
    # A line that dies without a reset (a router off, a cable pulled) is noticed by the server's
    # pings: every 10 s, the link given up after 3 unanswered (30 s instead of the default 2 min),
    # so the gateway's /mcp/v1/site and the router's cloud choice follow within about half a minute.
    return f"""\
ping_interval: "{LEAF_PING_INTERVAL_S}s"
ping_max: {LEAF_PING_MAX}
leafnodes {{
  reconnect: "{reconnect_s:g}s"
  remotes = [
    {{
      urls: [{urls}]
      nkey: {json.dumps(hub_nkey_seed)}
      deny_exports: {json.dumps(list(LEAF_DENY_EXPORTS))}
      deny_imports: {json.dumps(list(LEAF_DENY_IMPORTS))}
    }}
  ]
}}
"""


def render_leaf_config(site: LeafSite) -> str:
    """The building's nats-server configuration: its own JetStream domain, file storage fsynced
    on every write, and one leaf remote to the hub with the building's credentials."""
    domain = building_domain(site.copro_id)
    log = f"logfile: {json.dumps(str(site.log_file))}\n" if site.log_file else ""
    return f"""\
# Written by koprogo_shared.leaf_site: the building of copro {site.copro_id}.
server_name: {json.dumps(site.server_name or domain)}
host: {site.host}
port: {site.port}
{log}jetstream {{
  store_dir: {json.dumps(str(site.store_dir))}
  # Its own domain: the hub reaches this JetStream as $JS.{domain}.API, never as $JS.API.
  domain: {json.dumps(domain)}
  # fsync every write: a Pi that loses power while the line is down must keep what it acked.
  sync_interval: always
}}
{render_leaf_remote(site.hub_urls, site.hub_nkey_seed, site.reconnect_s)}
{site.authorization}"""


def building_inbox(copro_id: str) -> str:
    """The hub-local stream that takes a building's events over the leaf link (its inbox)."""
    return f"{BUILDING_INBOX_PREFIX}{_checked(copro_id)}"


def _copro_filters(copro_id: str) -> list[js_api.SubjectTransform]:
    # Transforms without a destination are filters: subjects kept, others not taken.
    return [js_api.SubjectTransform(src=subject, dest="") for subject in copro_event_filters(copro_id)]


def building_source(copro_id: str, stream: str = EVENTS_STREAM) -> js_api.StreamSource:
    """The inbox's source: the building's `stream`, through the leaf, this copro's subjects.

    The filters become those of a consumer the *building's* server creates: an honest building
    sends nothing else, a building edited by hand could send anything, so the inbox is not
    trusted; `inbox_source` filters again on the hub's own server.
    """
    return js_api.StreamSource(
        name=stream,
        external=js_api.ExternalStream(
            api=building_api_prefix(copro_id), deliver=building_deliver_prefix(copro_id)
        ),
        subject_transforms=_copro_filters(copro_id),
    )


def inbox_source(copro_id: str) -> js_api.StreamSource:
    """KOPROGO_EVENTS' source of a building's inbox: a local consumer of the hub's own server,
    so the filters (the copro's building event kinds, `copro_event_filters`) hold whatever the
    building's server did."""
    return js_api.StreamSource(name=building_inbox(copro_id), subject_transforms=_copro_filters(copro_id))


def inbox_config(copro_id: str, replicas: int = 1) -> js_api.StreamConfig:
    """The inbox: no subjects of its own (nothing published at the hub lands there), the building's
    stream as its only source, file storage; kept a week (the hub's KOPROGO_EVENTS takes from it
    on the same server at once; the week covers a KOPROGO_EVENTS under repair)."""
    return js_api.StreamConfig(
        name=building_inbox(copro_id),
        description=f"events of copro {copro_id}'s building, before the hub's own filter",
        subjects=[],
        sources=[building_source(copro_id)],
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        max_age=INBOX_MAX_AGE_S,
        # Bounded: a building flooding the hub fills its own inbox, not the hub's disk; full, the
        # source waits (the building keeps the rest, 30 days) instead of anything being dropped.
        max_bytes=INBOX_MAX_BYTES,
        discard=js_api.DiscardPolicy.NEW,
        duplicate_window=INBOX_DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )


def _same_building(source: js_api.StreamSource, copro_id: str) -> bool:
    return source.external is None and source.name == building_inbox(copro_id)


async def source_building(hub_js: JetStreamContext, copro_id: str, stream: str = EVENTS_STREAM) -> None:
    """Make the hub's `stream` take the building's events (idempotent; the operator's identity only):
    the building's inbox sources its stream over the leaf, and `stream` sources the inbox with the
    hub's own filters (docs/building-offline.md, "What sources what").

    The hub stream's configuration is read and written back with the source added, so its other
    sources and settings stay as they are.
    """
    info = await hub_js.stream_info(stream)
    config = info.config
    if config.mirror is not None:
        raise LeafSiteError(f"{stream} is a mirror; a mirror cannot also source a building")
    inbox = inbox_config(copro_id, replicas=config.num_replicas or 1)
    try:
        await hub_js.stream_info(inbox.name or "")
    except NotFoundError:
        await hub_js.add_stream(inbox)
    else:
        await hub_js.update_stream(inbox)
    kept = [source for source in config.sources or [] if not _same_building(source, copro_id)]
    await hub_js.update_stream(replace(config, sources=[*kept, inbox_source(copro_id)]))


async def stop_sourcing_building(
    hub_js: JetStreamContext, copro_id: str, stream: str = EVENTS_STREAM
) -> None:
    """Stop taking a building's events into the hub's `stream` (those stored stay). Its inbox stays
    too, still sourcing the building: declared again, `stream` resumes after the last inbox message
    it holds, and nothing the building sent meanwhile is lost."""
    config = (await hub_js.stream_info(stream)).config
    kept = [source for source in config.sources or [] if not _same_building(source, copro_id)]
    await hub_js.update_stream(replace(config, sources=kept or None))
