"""A building's NATS: a leaf node of the hub with its own JetStream domain (docs/building-offline.md).

The building's services talk to their own nats-server, which keeps their streams on its disk
(`sync_interval: always`) and holds a leaf connection to the hub. Nothing here copies a message:

* the building's facts are stored in its own KOPROGO_EVENTS (domain `building-<copro>`), and the
  hub's KOPROGO_EVENTS *sources* that stream through the leaf connection
  (`$JS.building-<copro>.API`). The hub's stream remembers the last building sequence it stored
  (the `Nats-Stream-Source` header of its messages) and resumes there after a cut or a restart of
  either side; an event that also reached the hub another way inside the de-dup window is dropped
  by its `Nats-Msg-Id`.
* Events never travel over the leaf connection as plain publishes: the building's remote refuses
  to export or import `koprogo.events.>` (else a building's publish would be captured twice while
  online, once directly by the hub's stream, once by sourcing, and the hub's events would fill the
  building's stream), and the hub's permissions for the building's key say the same again, so a
  building configured by hand cannot receive another copro's events or work.

    hub user of a building (copro C)   what it may send the hub (publish)      what the hub sends it (subscribe)
                                       koprogo.leaf.C.> (its sourced events),    $JS.building-C.API.> (the hub's
                                       $JSC.R.> (answers to the hub's            source consumer requests),
                                       consumer requests), $LDS.> (the leaf      $JS.FC.> (flow control),
                                       connection's loop detection)              $LDS.>

(nats-server applies a leaf connection's user permissions from the hub's side: what the user may
publish is what the hub accepts from the leaf, what it may subscribe is what the hub sends it.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from nats.js import JetStreamContext
from nats.js import api as js_api

from koprogo_shared.subjects import DEADLETTER_PREFIX, EVENTS_ALL, EVENTS_STREAM

# A copro id names the building's JetStream domain and subject tokens (as a copro pool does).
_COPRO_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Where a building's sourced events are delivered to the hub (the source's `deliver` prefix):
# its own subjects, so its hub key may publish there and nowhere else.
_LEAF_DELIVER_ROOT = "koprogo.leaf"
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


def copro_event_filters(copro_id: str) -> tuple[str, str]:
    """The event subjects of one copro: what the hub accepts from its building's stream."""
    head = ".".join(["koprogo", "events", "*", "*"])
    assert len(head.split(".")) == _COPRO_TOKEN
    copro = _checked(copro_id)
    return (f"{head}.{copro}", f"{head}.{copro}.>")


# What the building's remote refuses to send the hub as plain messages: its facts reach the hub
# by sourcing alone, and its local work and dead letters stay local.
LEAF_DENY_EXPORTS: tuple[str, ...] = (
    EVENTS_ALL,
    "koprogo.work.edge.>",
    "koprogo.work.grid.>",
    f"{DEADLETTER_PREFIX}.>",
)
# What it refuses to receive from the hub: other copros' facts, the hub's work, its dead letters.
LEAF_DENY_IMPORTS: tuple[str, ...] = (EVENTS_ALL, "koprogo.work.>", f"{DEADLETTER_PREFIX}.>")


@dataclass(frozen=True, slots=True)
class LeafLinkPermissions:
    """The hub's permissions for a building's leaf connection (its user's `permissions`)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def leaf_link_permissions(copro_id: str) -> LeafLinkPermissions:
    """What the hub lets copro `copro_id`'s building send and receive (see the module docstring)."""
    return LeafLinkPermissions(
        publish=(f"{building_deliver_prefix(copro_id)}.>", "$JSC.R.>", "$LDS.>"),
        subscribe=(f"{building_api_prefix(copro_id)}.>", "$JS.FC.>", "$LDS.>"),
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


def render_leaf_config(site: LeafSite) -> str:
    """The building's nats-server configuration: its own JetStream domain, file storage fsynced
    on every write, and one leaf remote to the hub with the building's credentials."""
    domain = building_domain(site.copro_id)
    if not site.hub_urls:
        raise LeafSiteError("a building needs the hub's leaf URL (nats-leaf://host:7422)")
    for url in site.hub_urls:
        if not url.startswith(("nats-leaf://", "tls://", "ws://", "wss://")):
            raise LeafSiteError(f"hub leaf URL {url!r}: use nats-leaf://host:7422")
    urls = ", ".join(json.dumps(url) for url in site.hub_urls)
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
leafnodes {{
  reconnect: "{site.reconnect_s:g}s"
  remotes = [
    {{
      urls: [{urls}]
      nkey: {json.dumps(site.hub_nkey_seed)}
      deny_exports: {json.dumps(list(LEAF_DENY_EXPORTS))}
      deny_imports: {json.dumps(list(LEAF_DENY_IMPORTS))}
    }}
  ]
}}
{site.authorization}"""


def building_source(copro_id: str, stream: str = EVENTS_STREAM) -> js_api.StreamSource:
    """The hub stream's source for one building: its `stream`, through the leaf, this copro's subjects only."""
    return js_api.StreamSource(
        name=stream,
        external=js_api.ExternalStream(
            api=building_api_prefix(copro_id), deliver=building_deliver_prefix(copro_id)
        ),
        # Filters (no destination: subjects kept): the consumer the hub asks the building's server
        # for takes only this copro's subjects. An honest building sends nothing else; a building
        # server edited by hand could (the hub stores a sourced message whatever its subject):
        # docs/building-offline.md, "Known gap".
        subject_transforms=[
            js_api.SubjectTransform(src=subject, dest="") for subject in copro_event_filters(copro_id)
        ],
    )


def _same_building(source: js_api.StreamSource, copro_id: str) -> bool:
    return source.external is not None and source.external.api == building_api_prefix(copro_id)


async def source_building(hub_js: JetStreamContext, copro_id: str, stream: str = EVENTS_STREAM) -> None:
    """Make the hub's `stream` source the building's (idempotent; the operator's identity only).

    The hub's configuration is read and written back with the source added, so its other
    sources and settings stay as they are.
    """
    info = await hub_js.stream_info(stream)
    config = info.config
    if config.mirror is not None:
        raise LeafSiteError(f"{stream} is a mirror; a mirror cannot also source a building")
    wanted = building_source(copro_id, stream)
    kept = [source for source in config.sources or [] if not _same_building(source, copro_id)]
    await hub_js.update_stream(replace(config, sources=[*kept, wanted]))


async def stop_sourcing_building(
    hub_js: JetStreamContext, copro_id: str, stream: str = EVENTS_STREAM
) -> None:
    """Remove a building's source from the hub's `stream` (its events already stored stay)."""
    config = (await hub_js.stream_info(stream)).config
    kept = [source for source in config.sources or [] if not _same_building(source, copro_id)]
    await hub_js.update_stream(replace(config, sources=kept or None))
