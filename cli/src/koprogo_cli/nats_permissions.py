"""What each NATS identity may publish and subscribe to: the allow-list of each service and edge node.

Pure rules, no files: the keys are `nats_keys`'s, and `nats_auth` gives each identity its rules
in the server's `authorization` block.

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
               erasure, ordered consumers on KOPROGO_EVENTS,
               listing its consumers and deleting single
               messages from it
    router     streams: info only; consumers `router`             its inbox,
               and `router-fallback` on KOPROGO_EVENTS;           koprogo.nodes.heartbeat.*,
               koprogo.work.{edge,cloud,grid}.>,                  koprogo.nodes.cloud.*
               koprogo.events.chat.failed.>, koprogo.reply.*,
               koprogo.nodes.announce, their dead letters; read
               and watch the routing-policy bucket, and write
               its own defaults there (key router.defaults)
    cloud      per deployment D: consumer `cloud-D` on            its inbox,
               KOPROGO_WORK (filter koprogo.work.cloud.*.D), its  koprogo.nodes.announce,
               dead letters, koprogo.nodes.cloud.D;               koprogo.cancel.*
               consumer `routed-D` on KOPROGO_EVENTS (filter
               koprogo.events.chat.requested.*.cloud.D), its
               dead letters;
               koprogo.events.chat.completed.*.cloud,
               koprogo.events.chat.failed.>,
               koprogo.events.inference.attempt_failed.>,
               koprogo.reply.* (the gateways' own subjects);
               message gets from KOPROGO_EVENTS (stored answers)
    gateway    koprogo.events.chat.{requested,failed,delivered}.>, its inbox, koprogo.reply.>,
               koprogo.events.user.erasure_requested.>,           koprogo.nodes.heartbeat.*,
               koprogo.cancel.>, koprogo.nodes.announce; the      koprogo.nodes.cloud.*
               buckets
               KOPROGO_RATE_LIMITS and KOPROGO_ROUTING_POLICIES
               (declare, get, put, delete; the policies also
               watched)
    node       per pool P and model M: stream info of          its inbox,
               KOPROGO_WORK, consumer `edge-M` (P shared) or      koprogo.nodes.announce
               `edge_pool-P_dM` (create with filter
               koprogo.work.edge.P.M only, info, next, ack), its
               dead letters; P is `shared` or, for a node minted
               with `--copro C`, `copro-C` (each C); on
               KOPROGO_EVENTS consumer `routed-edge_dP_dM` (create
               with filter koprogo.events.chat.requested.*.edge.P.M
               only, info, next, ack) and its dead letters;
               koprogo.events.chat.{completed,failed}.*.node.     koprogo.cancel.node.<its id>.*
               <its id>,
               koprogo.reply.*.node.<its id>,
               koprogo.nodes.heartbeat.<its id>

    grid       see `nats_grid_auth` (and what it adds to the gateway's, the router's and a node's)

"Its inbox" is `_INBOX.<its public key>.>`: the client takes that prefix
(`koprogo_shared.subjects.inbox_prefix`), so no identity reads another's replies (a node
could otherwise read the chats the router and the ledger fetch).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from koprogo_cli import nats_grid_auth
from koprogo_shared import subjects
from koprogo_shared.kv_buckets import IDEMPOTENCY_BUCKET

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


def _ordered_reads(stream: str) -> list[str]:
    """Read a stream with ephemeral ordered push consumers (nats-py's `ordered_consumer=True`,
    a KV watch): create one (its name is nats-py's), look it up, delete it, answer flow control."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _every(subject_of: Callable[[str], str]) -> str:
    """`koprogo.events.chat.failed.>` from `subjects.chat_failed` (its last token, any value)."""
    return subject_of("_").rsplit(".", 1)[0] + ".>"


def own_inbox(public_key: str) -> str:
    """The subjects of an identity's own replies, `_INBOX.<its public key>.>`."""
    return f"{subjects.inbox_prefix(public_key)}.>"


def ledger_permissions(public_key: str) -> Permissions:
    stream = subjects.EVENTS_STREAM
    return Permissions(
        publish=(
            *_stream_info(),
            *_pull_consumer(stream, subjects.LEDGER_DURABLE, subjects.EVENTS_ALL),
            subjects.deadletter_for(subjects.EVENTS_ALL),
            # GDPR erasure (koprogo_ledger.adapters.stream_scrubber): read the chat subjects
            # with an ordered consumer, list the stream's consumers (their ack floors), delete
            # the user's messages one by one.
            f"$JS.API.STREAM.MSG.DELETE.{stream}",
            f"$JS.API.CONSUMER.LIST.{stream}",
            *_ordered_reads(stream),
        ),
        subscribe=(own_inbox(public_key),),
    )


def router_permissions(public_key: str) -> Permissions:
    return Permissions(
        publish=(
            *_stream_info(),
            *_pull_consumer(
                subjects.EVENTS_STREAM, subjects.ROUTER_DURABLE, subjects.UNROUTED_CHAT_REQUESTED
            ),
            subjects.deadletter_for(subjects.UNROUTED_CHAT_REQUESTED),
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
            # Its own defaults, for the gateways (`routing.policy_book.publish_router_defaults`).
            f"$KV.{subjects.ROUTING_POLICY_BUCKET}.{subjects.ROUTER_DEFAULTS_KEY}",
        ),
        subscribe=(
            own_inbox(public_key),
            subjects.NODE_HEARTBEAT_ALL,
            subjects.CLOUD_STATUS_ALL,
        ),
    )


def cloud_permissions(public_key: str, deployments: Sequence[str]) -> Permissions:
    """Only its deployments' work in; results, attempt failures, replies and its statuses out."""
    work: list[str] = [
        f"$JS.API.STREAM.INFO.{subjects.WORK_STREAM}",
        f"$JS.API.STREAM.INFO.{subjects.EVENTS_STREAM}",
        # A stored answer to an item that may have been answered before is looked for (its
        # copro's cloud answers read one by one, by time then by sequence) instead of paying the
        # provider again. On the audit log, only its own deployments' durables of routed
        # requests, each with exactly its filter (the grant names both): never the ledger's or
        # the router's.
        f"$JS.API.STREAM.MSG.GET.{subjects.EVENTS_STREAM}",
    ]
    for deployment in deployments:
        subject = subjects.cloud_work_filter(deployment)
        work += _pull_consumer(subjects.WORK_STREAM, subjects.cloud_work_durable(deployment), subject)
        work.append(subjects.deadletter_for(subject))
        routed = subjects.routed_requests_filter(deployment)
        work += _pull_consumer(subjects.EVENTS_STREAM, subjects.routed_requests_durable(deployment), routed)
        work.append(subjects.deadletter_for(routed))
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
        subscribe=(own_inbox(public_key), subjects.NODES_ANNOUNCE, _every(subjects.chat_cancel)),
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
        *_ordered_reads(stream),
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
            *_routing_policies_read(),  # watched, to route the requests it can (as the router)
            *_kv_bucket_read_write(IDEMPOTENCY_BUCKET),
            *nats_grid_auth.gateway_publish(),
        ),
        # Every gateway reply subject: replicas may share this identity, each with its own id.
        subscribe=(
            own_inbox(public_key),
            _every(subjects.gateway_reply),
            subjects.NODE_HEARTBEAT_ALL,
            subjects.CLOUD_STATUS_ALL,
        ),
    )


def grid_permissions(public_key: str) -> Permissions:
    return Permissions(
        publish=tuple(nats_grid_auth.scheduler_publish()),
        subscribe=(own_inbox(public_key), *nats_grid_auth.scheduler_subscribe()),
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
            # The requests gateways routed to its pool and model, on the audit log: exactly that
            # durable with exactly that filter (never another copro's pool, nor the whole log).
            routed = subjects.routed_edge_requests_filter(model, pool)
            work += _pull_consumer(
                subjects.EVENTS_STREAM, subjects.routed_edge_requests_durable(model, pool), routed
            )
            work.append(subjects.deadletter_for(routed))
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
        subscribe=(own_inbox(public_key), subjects.NODES_ANNOUNCE, subjects.node_cancels(node_id)),
    )


def check_node(node_id: str, models: Sequence[str]) -> None:
    if not NODE_ID.match(node_id):
        raise NatsAuthError(f"node id {node_id!r}: use 1-64 letters, digits, '.', '-' or '_'")
    if not models:
        raise NatsAuthError(f"node {node_id}: name at least one model")
    for model in models:
        if not MODEL_ID.match(model):
            raise NatsAuthError(f"model id {model!r}: use letters, digits and '.:+-_'")
