"""NATS identities: one nkey per service and per edge node, and what each may do.

`koprogo up` mints the keys once per data folder (`<data>/secrets/nats/`, seeds mode 0600),
writes the server's `authorization` block from `identities()` and hands each service its
seed file (`NATS_NKEY_SEED_FILE`). `koprogo nats-config` and `koprogo nats-node-key` do the
same for a deployment (`deploy/nats/`).

Every identity is a user of the one global account: all of them work on the same KOPROGO_*
streams, which separate accounts could share only through exports and imports of every
JetStream API subject involved. The separation lives in each user's allow-lists; anything
not listed is refused by the server ("permissions violation"). No identity but the
operator's (`admin`, given to no service) may create, update, delete or purge a stream (it
declares them before the services start: `koprogo up`, or a deployment's setup step running
`python -m koprogo_shared.nats_connection`); the ledger alone may delete single messages
of KOPROGO_EVENTS (a user's contents, on GDPR erasure).

    identity   publish                                           subscribe
    ledger     streams: info only; consumer `ledger`              its inbox
               on KOPROGO_EVENTS (create, info, next, ack);
               koprogo.deadletter.koprogo.events.>; for GDPR
               erasure, ordered consumers on KOPROGO_EVENTS and
               deleting single messages from it
    router     streams: info only; consumers `router`             its inbox,
               and `router-fallback` on KOPROGO_EVENTS;           koprogo.nodes.heartbeat.*,
               koprogo.work.{edge,cloud,grid}.>,                  koprogo.nodes.cloud.*
               koprogo.events.chat.failed.>, koprogo.reply.*,
               koprogo.nodes.announce, their dead letters; read
               and watch the routing-policy bucket
    cloud      per deployment D: consumer `cloud-D` on            its inbox,
               KOPROGO_WORK (filter koprogo.work.cloud.*.D), its  koprogo.nodes.announce,
               dead letters, koprogo.nodes.cloud.D;               koprogo.cancel.*
               koprogo.events.chat.{completed,failed}.>,
               koprogo.events.inference.attempt_failed.>,
               koprogo.reply.* (the gateways' own subjects)
    gateway    koprogo.events.chat.{requested,failed,delivered}.>, its inbox, koprogo.reply.>,
               koprogo.events.user.erasure_requested.>,           koprogo.nodes.heartbeat.*,
               koprogo.cancel.>, koprogo.nodes.announce; the      koprogo.nodes.cloud.*
               buckets
               KOPROGO_RATE_LIMITS and KOPROGO_ROUTING_POLICIES
               (declare, get, put, delete)
    node       per pool P and model M: stream info of          its inbox,
               KOPROGO_WORK, consumer `edge-M` (P shared) or      koprogo.nodes.announce
               `edge_pool-P_dM` (create with filter
               koprogo.work.edge.P.M only, info, next, ack), its
               dead letters; P is `shared` or, for a node minted
               with `--copro C`, `copro-C` (each C);
               koprogo.events.chat.{completed,failed}.*.node.     koprogo.cancel.node.<its id>.*
               <its id>,
               koprogo.reply.*.node.<its id>,
               koprogo.nodes.heartbeat.<its id>

    grid       see `nats_grid_auth` (and what it adds to the gateway's, the router's and a node's)

"Its inbox" is `_INBOX.<its public key>.>`: the client takes that prefix
(`koprogo_shared.subjects.inbox_prefix`), so no identity reads another's replies (a node
could otherwise read the chats the router and the ledger fetch).

What a node's key was minted for is also written to the node roster, `<keys>/roster.json`
(`koprogo_shared.node_roster`): the server tells no subscriber who published, so the router
checks each heartbeat's models (and pools) against it (`NODE_ROSTER_FILE`). For the grid the
roster also holds each node's public key (its grid signatures), its owner and its device; and the
grid identity's public key is written beside its seed (`grid.pub`): nodes check the scheduler's
signature on each assignment with it (`GRID_SCHEDULER_PUBLIC_KEY`, docs/grid-trust.md). The
ledger's (`ledger.pub`) checks the token ledger's signed heads (`koprogo ledger verify --ledger-key`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import nkeys

from koprogo_cli import nats_grid_auth
from koprogo_shared import leaf_site, subjects
from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.kv_buckets import IDEMPOTENCY_BUCKET
from koprogo_shared.nats_connection import nkey_public_key
from koprogo_shared.node_roster import DeviceProfile, NodeGrant, parse_roster, render_roster

SERVICES = ("ledger", "router", "gateway", "cloud", "grid")
ADMIN = "admin"
# The identity whose key signs the grid's assignments (the scheduler's).
GRID_SCHEDULER = "grid"
# Node ids name a seed file and a heartbeat subject token; model ids a subject token.
NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MODEL_ID = re.compile(r"^[A-Za-z0-9_.:+-]{1,128}$")
# Copro ids name a pool: a subject token and part of a consumer name.
COPRO_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class NatsAuthError(ValueError):
    """A node id or model id that cannot name a NATS identity."""


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # May answer the requests it received (their reply inboxes), as the grid scheduler answers polls.
    allow_responses: bool = False


@dataclass(frozen=True, slots=True)
class NatsUser:
    """One entry of the server's `authorization { users = [...] }`."""

    label: str
    public_key: str
    # None: the operator's identity, allowed everything.
    permissions: Permissions | None


@dataclass(frozen=True, slots=True)
class Identities:
    users: list[NatsUser]
    # "ledger", "router", "gateway", "admin", "node:<id>" -> seed file
    seed_files: dict[str, Path] = field(default_factory=dict)


def _stream_info() -> list[str]:
    """Look the streams up, never create or update them: the operator (`admin`) declares them
    (`koprogo up`, or a deployment's stream setup step); an update could shrink `max_age` and purge."""
    return [f"$JS.API.STREAM.INFO.{spec.name}" for spec in subjects.STREAMS]


def _pull_consumer(stream: str, durable: str, filter_subject: str) -> list[str]:
    """Create (with exactly this filter), look up, fetch from and settle one durable."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{filter_subject}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _every(subject_of: Callable[[str], str]) -> str:
    """`koprogo.events.chat.failed.>` from `subjects.chat_failed` (its last token, any value)."""
    return subject_of("_").rsplit(".", 1)[0] + ".>"


def _inbox(public_key: str) -> str:
    return f"{subjects.inbox_prefix(public_key)}.>"


def ledger_permissions(public_key: str) -> Permissions:
    stream = subjects.EVENTS_STREAM
    return Permissions(
        publish=(
            *_stream_info(),
            *_pull_consumer(stream, subjects.LEDGER_DURABLE, subjects.EVENTS_ALL),
            subjects.deadletter_for(subjects.EVENTS_ALL),
            # GDPR erasure (koprogo_ledger.adapters.stream_scrubber): read the chat subjects
            # with an ordered consumer, delete the user's messages one by one.
            f"$JS.API.STREAM.MSG.DELETE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.FC.{stream}.>",
        ),
        subscribe=(_inbox(public_key),),
    )


def router_permissions(public_key: str) -> Permissions:
    return Permissions(
        publish=(
            *_stream_info(),
            *_pull_consumer(subjects.EVENTS_STREAM, subjects.ROUTER_DURABLE, subjects.CHAT_REQUESTED_ALL),
            subjects.deadletter_for(subjects.CHAT_REQUESTED_ALL),
            *_pull_consumer(
                subjects.EVENTS_STREAM,
                subjects.ROUTER_FALLBACK_DURABLE,
                subjects.INFERENCE_ATTEMPT_FAILED_ALL,
            ),
            subjects.deadletter_for(subjects.INFERENCE_ATTEMPT_FAILED_ALL),
            subjects.EDGE_WORK_ALL,
            *nats_grid_auth.router_publish(),
            subjects.CLOUD_WORK_ALL,
            _every(subjects.chat_failed),
            subjects.GATEWAY_REPLY_ANY,
            subjects.NODES_ANNOUNCE,
            *_routing_policies_read(),
        ),
        subscribe=(
            _inbox(public_key),
            subjects.NODE_HEARTBEAT_ALL,
            subjects.CLOUD_STATUS_ALL,
        ),
    )


def cloud_permissions(public_key: str, deployments: Sequence[str]) -> Permissions:
    """Only its deployments' work in; results, attempt failures, replies and its statuses out."""
    work: list[str] = [
        f"$JS.API.STREAM.INFO.{subjects.WORK_STREAM}",
        f"$JS.API.STREAM.INFO.{subjects.EVENTS_STREAM}",
        # A redelivered item's stored answer is looked up by its subject (the answer keyed by
        # request) instead of paying the provider again; a trusted service, like the ledger.
        f"$JS.API.STREAM.MSG.GET.{subjects.EVENTS_STREAM}",
    ]
    for deployment in deployments:
        subject = subjects.cloud_work_filter(deployment)
        work += _pull_consumer(subjects.WORK_STREAM, subjects.cloud_work_durable(deployment), subject)
        work.append(subjects.deadletter_for(subject))
        work.append(subjects.cloud_status(deployment))
    return Permissions(
        publish=(
            *work,
            subjects.CLOUD_COMPLETED_ANY,
            _every(subjects.chat_failed),
            _every(subjects.inference_attempt_failed),
            subjects.GATEWAY_REPLY_ANY,
        ),
        # The cancels of requests it answers: a caller that left stops the provider call.
        subscribe=(_inbox(public_key), subjects.NODES_ANNOUNCE, _every(subjects.chat_cancel)),
    )


def _routing_policies_read() -> list[str]:
    """Read and watch the copros' routing policies (the router's view of the bucket)."""
    stream = f"KV_{subjects.ROUTING_POLICY_BUCKET}"
    return [
        # Declared by the setup step (koprogo_shared.kv_buckets), as the admin identity.
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        # A watch is an ephemeral ordered push consumer on the bucket's subjects.
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _kv_bucket_read_write(bucket: str) -> list[str]:
    """A key-value bucket the gateways read and write (and delete) keys of; the setup step declares it."""
    stream = f"KV_{bucket}"
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$KV.{bucket}.>",
    ]


def gateway_permissions(public_key: str) -> Permissions:
    return Permissions(
        publish=(
            _every(subjects.chat_requested),
            _every(subjects.chat_failed),
            _every(subjects.chat_delivered),
            _every(subjects.user_erasure_requested),
            _every(subjects.chat_cancel),
            subjects.NODES_ANNOUNCE,
            *_kv_bucket_read_write(subjects.RATE_LIMIT_BUCKET),
            *_kv_bucket_read_write(subjects.ROUTING_POLICY_BUCKET),
            *_kv_bucket_read_write(IDEMPOTENCY_BUCKET),
            *nats_grid_auth.gateway_publish(),
        ),
        # Every gateway reply subject: replicas may share this identity, each with its own id.
        subscribe=(
            _inbox(public_key),
            _every(subjects.gateway_reply),
            subjects.NODE_HEARTBEAT_ALL,
            subjects.CLOUD_STATUS_ALL,
        ),
    )


def grid_permissions(public_key: str) -> Permissions:
    return Permissions(
        publish=tuple(nats_grid_auth.scheduler_publish()),
        subscribe=(_inbox(public_key), *nats_grid_auth.scheduler_subscribe()),
        allow_responses=True,
    )


def node_pools(copros: Sequence[str]) -> list[str]:
    """A node's edge pools: its copros' own, or the shared pool when it names none."""
    for copro in copros:
        if not COPRO_ID.match(copro):
            raise NatsAuthError(f"copro id {copro!r}: use 1-100 letters, digits, '-' or '_'")
    return [subjects.copro_pool(c) for c in dict.fromkeys(copros)] or [subjects.SHARED_POOL]


def node_permissions(
    public_key: str, node_id: str, models: Sequence[str], copros: Sequence[str] = ()
) -> Permissions:
    """Only its models' work of its pools in, only its own results and heartbeat out."""
    check_node(node_id, models)
    work: list[str] = [f"$JS.API.STREAM.INFO.{subjects.WORK_STREAM}"]
    pools = node_pools(copros)
    for pool in pools:
        for model in models:
            subject = subjects.run_inference_edge(model, pool)
            work += _pull_consumer(subjects.WORK_STREAM, subjects.edge_work_durable(model, pool), subject)
            work.append(subjects.deadletter_for(subject))
    return Permissions(
        publish=(
            *work,
            # Its outcomes carry its id (the ledger keeps a completion only from the node it
            # names), as do its replies (the gateway takes them only from the node running the
            # request), and only its own cancels reach it.
            *subjects.node_outcomes(node_id),
            subjects.node_reply(subjects.GATEWAY_REPLY_ANY, node_id),
            subjects.node_heartbeat(node_id),
            *nats_grid_auth.node_publish(node_id, models, pools),
        ),
        subscribe=(_inbox(public_key), subjects.NODES_ANNOUNCE, subjects.node_cancels(node_id)),
    )


def check_node(node_id: str, models: Sequence[str]) -> None:
    if not NODE_ID.match(node_id):
        raise NatsAuthError(f"node id {node_id!r}: use 1-64 letters, digits, '.', '-' or '_'")
    if not models:
        raise NatsAuthError(f"node {node_id}: name at least one model")
    for model in models:
        if not MODEL_ID.match(model):
            raise NatsAuthError(f"model id {model!r}: use letters, digits and '.:+-_'")


def mint_seed(path: Path) -> str:
    """The public key of the user seed at `path`, minted first (mode 0600) when there is none."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    if not path.exists():
        seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(seed + b"\n")
    path.chmod(0o600)  # also tightens a seed that was copied in
    return nkey_public_key(path)


def node_seed_file(keys_dir: Path, node_id: str) -> Path:
    return keys_dir / "nodes" / f"{node_id}.nk"


def record_joined_node(
    keys_dir: Path, node_id: str, models: Sequence[str], copros: Sequence[str] = ()
) -> None:
    """Remember a node of another machine (`koprogo node join`): the stack admits it at every start."""
    check_node(node_id, models)
    node_pools(copros)
    path = keys_dir / "nodes" / f"{node_id}.json"
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    path.write_text(json.dumps({"models": list(models), "copros": list(copros)}) + "\n")


def joined_copros(keys_dir: Path) -> dict[str, list[str]]:
    """The copros whose pool each joined node belongs to (none: the shared pool)."""
    found: dict[str, list[str]] = {}
    for path in sorted((keys_dir / "nodes").glob("*.json")):
        try:
            found[path.stem] = [str(c) for c in json.loads(path.read_text()).get("copros", [])]
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # joined_nodes() names the broken record
    return found


def joined_nodes(keys_dir: Path) -> dict[str, list[str]]:
    """The nodes `koprogo node join` admitted, with their models."""
    found: dict[str, list[str]] = {}
    for path in sorted((keys_dir / "nodes").glob("*.json")):
        try:
            models = json.loads(path.read_text())["models"]
        except (OSError, ValueError, KeyError, TypeError):
            raise NatsAuthError(
                f"{path} is not a joined node's record: remove it, or join the node again"
            ) from None
        found[path.stem] = [str(m) for m in models]
    return found


def roster_file(keys_dir: Path) -> Path:
    """The node roster beside the keys: what each node's key was minted for."""
    return keys_dir / "roster.json"


def _recorded_grants(keys_dir: Path) -> dict[str, NodeGrant]:
    path = roster_file(keys_dir)
    try:
        return parse_roster(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise NatsAuthError(f"{path} is not a node roster: remove it, it is written again") from None


def recorded_grant(keys_dir: Path, node_id: str) -> NodeGrant | None:
    """A node's entry in the roster, None when it has none."""
    return _recorded_grants(keys_dir).get(node_id)


def recorded_footprint(keys_dir: Path, node_id: str) -> EdgeFootprint:
    """The energy declared for a node in the roster (the defaults when it has no entry)."""
    recorded = recorded_grant(keys_dir, node_id)
    return recorded.footprint if recorded is not None else EdgeFootprint()


def public_key_of(keys_dir: Path, identity: str) -> str:
    """An identity's public nkey (its seed minted once), also written to `<keys>/<identity>.pub`,
    so that a deployment hands it out without the seed (deploy/compose, deploy/k8s)."""
    public_key = mint_seed(keys_dir / f"{identity}.nk")
    public_file = keys_dir / f"{identity}.pub"
    if not public_file.exists() or public_file.read_text().strip() != public_key:
        partial = public_file.with_suffix(".pub.tmp")
        partial.write_text(public_key)  # no newline: a Kubernetes secretKeyRef hands the bytes as they are
        partial.replace(public_file)
    return public_key


def grid_scheduler_public_key(keys_dir: Path) -> str:
    """The grid scheduler's public nkey (`<keys>/grid.pub`): nodes are told it
    (`GRID_SCHEDULER_PUBLIC_KEY`) and run only the assignments it signed."""
    return public_key_of(keys_dir, GRID_SCHEDULER)


def record_grant(keys_dir: Path, node_id: str, grant: NodeGrant) -> None:
    """Write (or replace) a node's entry in the roster, the others kept."""
    path = roster_file(keys_dir)
    grants = _recorded_grants(keys_dir)
    if grants.get(node_id) == grant:
        return
    grants[node_id] = grant
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    # Written whole then renamed: a router reading it never sees half a file.
    partial = path.with_suffix(".json.tmp")
    partial.write_text(render_roster(grants))
    partial.replace(path)


def node_user(
    keys_dir: Path,
    node_id: str,
    models: Sequence[str],
    copros: Sequence[str] = (),
    footprint: EdgeFootprint | None = None,
    owner: str | None = None,
    device: DeviceProfile | None = None,
) -> tuple[NatsUser, Path]:
    """A node's identity: its seed file (minted once) and its users entry, its grant in the roster.

    `copros`: the copros whose own pool it belongs to (their work only); none: the shared pool.
    `footprint`: the energy its operator declares (its heartbeats may claim no better); None
    keeps what the roster holds for it, else `co2`'s defaults.
    `owner`: the operator running it (a grid task's replicas go to distinct owners); None keeps
    the roster's, else the node id. `device`: its hardware and place (Proof of Green's yardstick);
    None keeps the roster's, else `DeviceProfile`'s defaults. The roster also records the node's
    public key, which signs its grid reports.
    """
    check_node(node_id, models)
    pools = node_pools(copros)
    seed_file = node_seed_file(keys_dir, node_id)
    public_key = mint_seed(seed_file)
    recorded = recorded_grant(keys_dir, node_id)
    if footprint is None:
        footprint = recorded.footprint if recorded is not None else EdgeFootprint()
    if owner is None:
        owner = recorded.owner_of(node_id) if recorded is not None else node_id
    if device is None:
        device = recorded.device if recorded is not None else DeviceProfile()
    if device.idle_watts > footprint.power_watts:
        # Its declared-energy attestations (power x time) would all fall below idle x time.
        raise NatsAuthError(
            f"node {node_id}: an idle draw of {device.idle_watts:g} W above its power under load "
            f"({footprint.power_watts:g} W) cannot be: declare both (--idle-watts and --power-watts; for "
            "`koprogo up`'s own nodes IDLE_WATTS and POWER_WATTS)"
        )
    grant = NodeGrant(frozenset(models), frozenset(pools), footprint, public_key, owner, device)
    record_grant(keys_dir, node_id, grant)
    label = f"edge node {node_id}: {', '.join(models)} (pools {', '.join(pools)})"
    return NatsUser(label, public_key, node_permissions(public_key, node_id, models, copros)), seed_file


# A building's site file beside its keys (`koprogo building add` writes it into the building's
# folder): the copro it serves. Its services then take their replies under the building's inbox
# root (`leaf_site.building_inbox_root`), which the hub may answer over the leaf link.
SITE_FILE = "site.json"
# In a building's folder: the seed of its leaf link to the hub (a copy of the hub's
# `buildings/<copro>.nk`, made by `koprogo building add`).
HUB_LEAF_SEED = "hub-leaf.nk"


def building_seed_file(keys_dir: Path, copro_id: str) -> Path:
    """At the hub: the seed of a building's leaf link (`koprogo building add`)."""
    leaf_site.building_domain(copro_id)  # refuses an id that cannot name a building
    return keys_dir / "buildings" / f"{copro_id}.nk"


def registered_buildings(keys_dir: Path) -> list[str]:
    """At the hub: the copros whose building `koprogo building add` registered."""
    return sorted(path.stem for path in (keys_dir / "buildings").glob("*.nk"))


def write_building_site(keys_dir: Path, copro_id: str) -> None:
    """In a building's folder: the copro it serves (read by `building_of`)."""
    leaf_site.building_domain(copro_id)
    keys_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    (keys_dir / SITE_FILE).write_text(json.dumps({"building_of": copro_id}) + "\n")
    (keys_dir / SITE_FILE).chmod(0o600)  # beside the seeds, as private as they are


def building_of(keys_dir: Path) -> str | None:
    """The copro this folder's building serves, or None for a hub (no site file)."""
    path = keys_dir / SITE_FILE
    try:
        copro = json.loads(path.read_text())["building_of"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise NatsAuthError(
            f"{path} is not a building's site file: write it again with `koprogo building add`"
        ) from None
    leaf_site.building_domain(str(copro))
    return str(copro)


def _under_inbox_root(user: NatsUser, root: str) -> NatsUser:
    """`user` with its inbox (`_INBOX.<key>.>`) moved under `root`."""
    if user.permissions is None:
        return user
    own, moved = _inbox(user.public_key), f"{subjects.inbox_prefix(user.public_key, root)}.>"
    subscribe = tuple(moved if subject == own else subject for subject in user.permissions.subscribe)
    return replace(user, permissions=replace(user.permissions, subscribe=subscribe))


def building_user(keys_dir: Path, copro_id: str) -> NatsUser:
    """At the hub: a building's leaf link, its seed minted once (`leaf_site.leaf_link_permissions`)."""
    rules = leaf_site.leaf_link_permissions(copro_id)
    public_key = mint_seed(building_seed_file(keys_dir, copro_id))
    return NatsUser(
        f"leaf link of copro {copro_id}'s building", public_key, Permissions(rules.publish, rules.subscribe)
    )


def identities(
    keys_dir: Path,
    nodes: Mapping[str, Sequence[str]],
    cloud_deployments: Sequence[str] = (),
    node_copros: Mapping[str, Sequence[str]] | None = None,
    node_footprints: Mapping[str, EdgeFootprint] | None = None,
    node_owners: Mapping[str, str] | None = None,
    node_devices: Mapping[str, DeviceProfile] | None = None,
) -> Identities:
    """The services', the operator's and these nodes' identities, keys minted where missing.

    `cloud_deployments`: the deployment ids the cloud worker may serve (its work subjects).
    `node_copros`: per node, the copros whose pool it belongs to; a node not named there keeps
    what `koprogo node join --copro` recorded, else the shared pool.
    `node_footprints`: per node, the energy declared for it; a node not named there keeps the
    roster's (as `koprogo node join` declared it), else the defaults.
    `node_owners`, `node_devices`: the same for each node's owner and device (`node_user`).
    The grid scheduler's and the ledger's public keys are written beside their seeds (`public_key_of`).
    """
    copros_of = {**joined_copros(keys_dir), **(node_copros or {})}
    rules: dict[str, Callable[[str], Permissions]] = {
        "ledger": ledger_permissions,
        "router": router_permissions,
        "gateway": gateway_permissions,
        "cloud": lambda public_key: cloud_permissions(public_key, cloud_deployments),
        "grid": grid_permissions,
    }
    found = Identities(users=[])
    for service in SERVICES:
        seed_file = keys_dir / f"{service}.nk"
        public_key = mint_seed(seed_file)
        found.users.append(NatsUser(service, public_key, rules[service](public_key)))
        found.seed_files[service] = seed_file
    # Public keys others check signatures with: the scheduler's (assignments) and the ledger's
    # (the token ledger's signed heads, which the ledger signs with its NATS seed).
    grid_scheduler_public_key(keys_dir)
    public_key_of(keys_dir, "ledger")
    admin_seed = keys_dir / f"{ADMIN}.nk"
    found.users.append(NatsUser("operator (admin): given to no service", mint_seed(admin_seed), None))
    found.seed_files[ADMIN] = admin_seed
    for node_id, models in nodes.items():
        user, seed_file = node_user(
            keys_dir,
            node_id,
            models,
            copros_of.get(node_id, ()),
            (node_footprints or {}).get(node_id),
            (node_owners or {}).get(node_id),
            (node_devices or {}).get(node_id),
        )
        found.users.append(user)
        found.seed_files[f"node:{node_id}"] = seed_file
    # At the hub, each registered building's leaf link; in a building, every identity's inbox
    # under the building's root.
    found.users.extend(building_user(keys_dir, copro) for copro in registered_buildings(keys_dir))
    if (copro := building_of(keys_dir)) is not None:
        root = leaf_site.building_inbox_root(copro)
        found.users[:] = [_under_inbox_root(user, root) for user in found.users]
    return found


def _allow(subjects_: Sequence[str], indent: str) -> str:
    items = "".join(f"{indent}  {json.dumps(s)}\n" for s in subjects_)
    return f"{{ allow: [\n{items}{indent}] }}"


def render_user(user: NatsUser, indent: str = "") -> str:
    """One `users` entry, in nats-server's configuration syntax (subjects quoted: `$` is literal)."""
    label = re.sub(r"[^\x20-\x7e]", "?", user.label)
    lines = [f"{indent}# {label}", f"{indent}{{", f"{indent}  nkey: {json.dumps(user.public_key)}"]
    if user.permissions is not None:
        inner = indent + "    "
        lines += [
            f"{indent}  permissions: {{",
            f"{inner}publish: {_allow(user.permissions.publish, inner)}",
            f"{inner}subscribe: {_allow(user.permissions.subscribe, inner)}",
            # A map, not `true`: nats-server's own `allow_responses: true` is max 1 response, no expiry.
            *([f"{inner}allow_responses: true"] if user.permissions.allow_responses else []),
            f"{indent}  }}",
        ]
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def render_authorization(users: Sequence[NatsUser]) -> str:
    """The `authorization` block: only these keys connect, each with its permissions."""
    entries = "\n".join(render_user(user, "    ") for user in users)
    return f"authorization {{\n  users = [\n{entries}\n  ]\n}}\n"
