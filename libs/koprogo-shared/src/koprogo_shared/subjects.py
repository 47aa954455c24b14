"""Subject and stream names, declared once.

* `koprogo.events.>`  facts, kept in the KOPROGO_EVENTS stream (limits retention: the audit log);
  an edge node holding a key publishes its outcomes on `koprogo.events.chat.{completed,failed}.
  <copro>.node.<node id>` (its key may publish there alone; the ledger checks the body's node).
* `koprogo.work.>`    work, in the KOPROGO_WORK stream (work-queue retention: one consumer takes it);
  edge work per pool and model, `koprogo.work.edge.<pool>.<model>`, so a node pulls only the
  work of the pools its key names (the shared pool, or its copros' own).
* `koprogo.deadletter.>` what a consumer could not handle, kept for an operator.
* `koprogo.nodes.*`   core NATS (not persisted): heartbeats and announce requests.
* `koprogo.reply.<gateway>` core NATS: answers to the gateway that is waiting, from the
  stack's services; `koprogo.reply.<gateway>.node.<node id>` from an edge node holding a key
  (its key may publish there alone, so the gateway knows who answered).
* `koprogo.cancel.<request id>` core NATS: the caller of a streamed chat left; the worker
  generating it stops at the next token (gateways publish, the cloud worker subscribes);
  `koprogo.cancel.node.<node id>.<request id>` for the edge node running it, which alone hears it.
* `koprogo.events.task.<step>.<copro>` the grid's task events (`task_events.py`); a node publishes
  its `started`/`result_reported` with `.node.<node id>` appended (its key may publish there alone).
* `koprogo.grid.poll.<node id>` core NATS: a node asks the scheduler for work (`GridPoll`).
* `koprogo.events.grid.node_trust.<node id>` a node's standing changed (`NodeTrustChanged`, scheduler).
* `_INBOX.<public nkey>.>` a client's own replies (JetStream acks, fetched messages), so an
  identity's subscribe permission covers its inbox and nobody else's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

EVENTS_STREAM = "KOPROGO_EVENTS"
WORK_STREAM = "KOPROGO_WORK"
DEADLETTER_STREAM = "KOPROGO_DEADLETTER"
# The gateways' rate-limit counters: a JetStream key-value bucket (stream `KV_<bucket>`,
# subjects `$KV.<bucket>.>`), declared by the gateway (`adapters/rate_limit_store.py`).
RATE_LIMIT_BUCKET = "KOPROGO_RATE_LIMITS"
# Each copro's default routing policy (`PUT /mcp/v1/copros/{id}/routing`): a JetStream
# key-value bucket written by the gateway (admins only), watched by the routers. Key:
# `routing_policy_key(copro_id)`; value: a RoutingPreference as JSON.
ROUTING_POLICY_BUCKET = "KOPROGO_ROUTING_POLICIES"
# The grid scheduler's state: one key per task (`TaskState` as JSON), the single source it rebuilds
# its queues from after a restart (`services/grid-scheduler`).
GRID_TASKS_BUCKET = "KOPROGO_GRID_TASKS"
# Task documents (JetStream object store, stream `OBJ_<bucket>`): written by the gateway, read by
# the node running the task; events carry `task_events.DocumentRef`s, never the bytes.
DOCUMENTS_BUCKET = "KOPROGO_DOCUMENTS"
# The grid scheduler's book of nodes: one key per node (its owner, public key, trust run, counts),
# so trust earned survives a restart (`services/grid-scheduler`).
GRID_NODES_BUCKET = "KOPROGO_GRID_NODES"

EVENTS_ALL = "koprogo.events.>"
CHAT_REQUESTED_ALL = "koprogo.events.chat.requested.>"
WORK_ALL = "koprogo.work.>"
EDGE_WORK_ALL = "koprogo.work.edge.>"
GRID_WORK_ALL = "koprogo.work.grid.>"
DEADLETTER_PREFIX = "koprogo.deadletter"

NODE_HEARTBEAT_ALL = "koprogo.nodes.heartbeat.*"
# The edge pool of nodes any copro may use (its policy permitting); a copro's own nodes form
# `copro_pool(copro_id)` (its NATS key says which: `koprogo nats-node-key --copro`).
SHARED_POOL = "shared"
NODES_ANNOUNCE = "koprogo.nodes.announce"
CLOUD_STATUS_ALL = "koprogo.nodes.cloud.*"
INFERENCE_ATTEMPT_FAILED_ALL = "koprogo.events.inference.attempt_failed.>"

_UNSAFE = re.compile(r"[.*>\s]")


def subject_token(value: str | None) -> str:
    """One subject token from a free value: `.`, `*`, `>` and spaces become `~`.

    Model ids and copro ids never contain `~`, so distinct values stay distinct.
    """
    if not value:
        return "_"
    return _UNSAFE.sub("~", value)


def chat_requested(copro_id: str | None) -> str:
    return f"koprogo.events.chat.requested.{subject_token(copro_id)}"


# The requests the router routes: `chat_requested`'s subjects exactly (no token after the copro).
UNROUTED_CHAT_REQUESTED = "koprogo.events.chat.requested.*"
_ROUTED_CLOUD = "cloud"


def routed_chat_requested(copro_id: str | None, deployment: str) -> str:
    """A request the gateway routed itself to a cloud deployment (`ChatRequested.routed`): stored
    once, on the audit log, where the deployment's workers take it (`routed_requests_filter`);
    still under `CHAT_REQUESTED_ALL` (the ledger, the GDPR scrubber), never the router's."""
    return f"{chat_requested(copro_id)}.{_ROUTED_CLOUD}.{subject_token(deployment)}"


def routed_requests_filter(deployment: str) -> str:
    """Every copro's requests routed to one cloud deployment (its workers' consumer filter)."""
    return f"koprogo.events.chat.requested.*.{_ROUTED_CLOUD}.{subject_token(deployment)}"


_ROUTED_EDGE = "edge"


def routed_edge_chat_requested(copro_id: str | None, pool: str, model: str) -> str:
    """A request the gateway routed itself to the edge nodes of `pool` serving `model`: stored
    once, on the audit log, where those nodes take it (`routed_edge_requests_filter`); as
    `routed_chat_requested`, under `CHAT_REQUESTED_ALL` and never the router's."""
    return f"{chat_requested(copro_id)}.{_ROUTED_EDGE}.{subject_token(pool)}.{subject_token(model)}"


def routed_edge_requests_filter(model: str, pool: str = SHARED_POOL) -> str:
    """Every copro's requests routed to the nodes of `pool` serving `model` (their consumer filter)."""
    return f"koprogo.events.chat.requested.*.{_ROUTED_EDGE}.{subject_token(pool)}.{subject_token(model)}"


def routed_request_copro(subject: str) -> str | None:
    """The copro token of a `routed_chat_requested` or `routed_edge_chat_requested` subject, else None."""
    tokens = subject.split(".")
    if tokens[:4] != ["koprogo", "events", "chat", "requested"]:
        return None
    if (len(tokens) == 7 and tokens[5] == _ROUTED_CLOUD) or (len(tokens) == 8 and tokens[5] == _ROUTED_EDGE):
        return tokens[4]
    return None


def chat_completed(copro_id: str | None) -> str:
    return f"koprogo.events.chat.completed.{subject_token(copro_id)}"


def chat_failed(copro_id: str | None) -> str:
    return f"koprogo.events.chat.failed.{subject_token(copro_id)}"


# An edge node holding a key publishes its outcomes with its id appended (its key may publish
# there alone), so the ledger knows which node sent a completion; the cloud worker (one
# trusted identity) and nodes without a key keep the subjects above.
_NODE_MARK = "node"


def node_chat_completed(copro_id: str | None, node_id: str) -> str:
    return f"{chat_completed(copro_id)}.{_NODE_MARK}.{subject_token(node_id)}"


def node_chat_failed(copro_id: str | None, node_id: str) -> str:
    return f"{chat_failed(copro_id)}.{_NODE_MARK}.{subject_token(node_id)}"


def node_outcomes(node_id: str) -> tuple[str, str]:
    """The subjects one node may publish its durable outcomes on (any copro)."""
    node = subject_token(node_id)
    return (
        f"koprogo.events.chat.completed.*.{_NODE_MARK}.{node}",
        f"koprogo.events.chat.failed.*.{_NODE_MARK}.{node}",
    )


# The cloud worker's answers have a subject of their own (the node marks its outcomes the same
# way): a redelivered work item whose answer was already stored (the worker died between storing
# it and acking the item) is looked for there, from a little before the item was made, and sent
# again instead of paying the provider a second time. One subject per copro, not per request:
# nats-server keeps an index entry (~330 bytes) for every subject the 30-day audit log holds
# (bench/README.md, *What a retained subject costs nats-server*). Answers stored by releases
# before 2026-12-04 are on `…cloud.<request>`, a subject each; nothing reads those any more.
_CLOUD_MARK = "cloud"
CLOUD_COMPLETED_ANY = f"koprogo.events.chat.completed.*.{_CLOUD_MARK}"


def cloud_chat_completed(copro_id: str | None) -> str:
    return f"{chat_completed(copro_id)}.{_CLOUD_MARK}"


def is_cloud_answer(subject: str) -> bool:
    """Whether `subject` is a `cloud_chat_completed` subject."""
    tokens = subject.split(".")
    return (
        len(tokens) == 6
        and tokens[:4] == ["koprogo", "events", "chat", "completed"]
        and tokens[5] == _CLOUD_MARK
    )


def outcome_sender(subject: str) -> str | None:
    """The node token of a `node_chat_completed`/`node_chat_failed` subject, else None."""
    tokens = subject.split(".")
    if len(tokens) == 7 and tokens[:3] == ["koprogo", "events", "chat"] and tokens[5] == _NODE_MARK:
        return tokens[6]
    return None


def chat_delivered(copro_id: str | None) -> str:
    return f"koprogo.events.chat.delivered.{subject_token(copro_id)}"


def user_erasure_requested(user_id: str | None) -> str:
    return f"koprogo.events.user.erasure_requested.{subject_token(user_id)}"


def copro_pool(copro_id: str) -> str:
    """The edge pool of one copro's own nodes (a subject token and a consumer-name part)."""
    return f"copro-{copro_id}"


def run_inference_edge(model: str, pool: str = SHARED_POOL) -> str:
    return f"koprogo.work.edge.{subject_token(pool)}.{subject_token(model)}"


def run_inference_grid(model: str) -> str:
    """Chat work for the grid: the nodes of the shared pool that joined it and serve `model`."""
    return f"koprogo.work.grid.{subject_token(model)}"


def inference_attempt_failed(copro_id: str | None) -> str:
    return f"koprogo.events.inference.attempt_failed.{subject_token(copro_id)}"


CLOUD_WORK_ALL = "koprogo.work.cloud.>"


def run_inference_cloud(copro_id: str | None, deployment: str) -> str:
    """Work for a cloud deployment, for a copro (`_`: none), the copro first: a building's leaf
    user may publish `koprogo.work.cloud.<its copro>.>` only (a permission ending in `>`: with
    the copro last, `koprogo.work.cloud.*.<copro>`, the building's cloud work found no responder
    at the hub, seen with nats-server 2.15.1), and the cloud worker checks the work item names the
    same copro."""
    return f"koprogo.work.cloud.{subject_token(copro_id)}.{subject_token(deployment)}"


def cloud_work_filter(deployment: str) -> str:
    """Every copro's work for one cloud deployment (its workers' consumer filter)."""
    return f"koprogo.work.cloud.*.{subject_token(deployment)}"


def cloud_work_copro(subject: str) -> str | None:
    """The copro token of a `run_inference_cloud` or `routed_chat_requested` subject, else None."""
    tokens = subject.split(".")
    if len(tokens) == 5 and tokens[:3] == ["koprogo", "work", "cloud"]:
        return tokens[3]
    if len(tokens) == 7 and tokens[5] == _ROUTED_CLOUD:
        return routed_request_copro(subject)
    return None


def cloud_status(deployment: str) -> str:
    return f"koprogo.nodes.cloud.{subject_token(deployment)}"


def node_heartbeat(node_id: str) -> str:
    return f"koprogo.nodes.heartbeat.{subject_token(node_id)}"


def gateway_reply(gateway_id: str) -> str:
    return f"koprogo.reply.{subject_token(gateway_id)}"


CHAT_CANCEL_ALL = "koprogo.cancel.*"
# Every gateway's own reply subject (the services reply there; nodes with a key never do).
GATEWAY_REPLY_ANY = "koprogo.reply.*"


def chat_cancel(request_id: str) -> str:
    return f"koprogo.cancel.{subject_token(request_id)}"


def node_reply(reply_subject: str, node_id: str) -> str:
    """Where an edge node holding a key sends what it replies to `reply_subject`."""
    return f"{reply_subject}.node.{subject_token(node_id)}"


def node_replies(reply_subject: str) -> str:
    """Every node's replies to `reply_subject` (the gateway subscribes)."""
    return f"{reply_subject}.node.*"


def node_cancel(node_id: str, request_id: str) -> str:
    """The cancel of `request_id` for the edge node running it."""
    return f"koprogo.cancel.node.{subject_token(node_id)}.{subject_token(request_id)}"


def node_cancels(node_id: str) -> str:
    """The cancels for one edge node (it may hear these alone)."""
    return f"koprogo.cancel.node.{subject_token(node_id)}.*"


# The grid. Task events: `koprogo.events.task.<step>.<copro>`.
TASK_EVENTS_ALL = "koprogo.events.task.>"
TASK_SUBMITTED_ALL = "koprogo.events.task.submitted.>"
TASK_CANCEL_REQUESTED_ALL = "koprogo.events.task.cancel_requested.>"
TASK_STARTED_ALL = "koprogo.events.task.started.>"
TASK_REPORTED_ALL = "koprogo.events.task.result_reported.>"
GRID_POLL_ALL = "koprogo.grid.poll.*"
GRID_SCHEDULER_DURABLE = "grid-scheduler"


def task_event(step: str, copro_id: str | None) -> str:
    """Where the gateway and the scheduler publish a task's `step` (submitted, assigned, completed...)."""
    return f"koprogo.events.task.{step}.{subject_token(copro_id)}"


def node_task_event(step: str, copro_id: str | None, node_id: str) -> str:
    """Where a node publishes its `started`/`result_reported` (its key may publish there alone)."""
    return f"{task_event(step, copro_id)}.{_NODE_MARK}.{subject_token(node_id)}"


def node_task_events(node_id: str) -> tuple[str, str]:
    """The task subjects one node may publish on (any copro)."""
    node = subject_token(node_id)
    return (
        f"koprogo.events.task.started.*.{_NODE_MARK}.{node}",
        f"koprogo.events.task.result_reported.*.{_NODE_MARK}.{node}",
    )


def task_sender(subject: str) -> str | None:
    """The node token of a `node_task_event` subject, else None."""
    tokens = subject.split(".")
    if len(tokens) == 7 and tokens[:3] == ["koprogo", "events", "task"] and tokens[5] == _NODE_MARK:
        return tokens[6]
    return None


def task_submitted_key(copro_id: str | None, task_id: str) -> str:
    """The subject a task's TaskSubmitted is stored under, so it can be read back by id."""
    return f"{task_event('submitted', copro_id)}.{subject_token(task_id)}"


def grid_poll(node_id: str) -> str:
    return f"koprogo.grid.poll.{subject_token(node_id)}"


GRID_NODE_TRUST_ALL = "koprogo.events.grid.node_trust.*"


def grid_node_trust(node_id: str) -> str:
    """Where the scheduler publishes a node's `NodeTrustChanged`."""
    return f"koprogo.events.grid.node_trust.{subject_token(node_id)}"


def poll_sender(subject: str) -> str | None:
    tokens = subject.split(".")
    if len(tokens) == 4 and tokens[:3] == ["koprogo", "grid", "poll"]:
        return tokens[3]
    return None


def deadletter_for(subject: str) -> str:
    return f"{DEADLETTER_PREFIX}.{subject}"


_DURABLE_ESCAPES = {"_": "__", ":": "_c", ".": "_d"}


def durable_name(prefix: str, value: str) -> str:
    """A consumer name from a free value (consumer names allow letters, digits, `-` and `_`).

    Injective for model ids (`[A-Za-z0-9:._-]`): `_` is doubled, `:` and `.` become `_c` and
    `_d`, so `a.b`, `a_b` and `a:b` get three different consumers (and permissions). Any
    other character is refused rather than folded into a name another value could get.
    """
    out = []
    for char in value:
        if char.isascii() and (char.isalnum() or char == "-"):
            out.append(char)
        elif char in _DURABLE_ESCAPES:
            out.append(_DURABLE_ESCAPES[char])
        else:
            raise ValueError(f"{value!r} cannot name a consumer: only letters, digits and ':._-'")
    return f"{prefix}-" + "".join(out)


ROUTER_DURABLE = "router"
ROUTER_FALLBACK_DURABLE = "router-fallback"
LEDGER_DURABLE = "ledger"


def edge_work_durable(model: str, pool: str = SHARED_POOL) -> str:
    """The durable every node of `pool` serving `model` shares on KOPROGO_WORK.

    The shared pool's is `edge-<model>` (as before pools); a copro pool's
    `edge_pool-<pool>_d<model>`, `<pool>.<model>` escaped as one value (a pool has no `.`).
    No two (pool, model) pairs share a consumer, nor its permissions.
    """
    if pool == SHARED_POOL:
        return durable_name("edge", model)
    return durable_name("edge_pool", f"{pool}.{model}")


def grid_work_durable(model: str) -> str:
    """The durable every grid node serving `model` shares on KOPROGO_WORK (`run_inference_grid`)."""
    return durable_name("grid", model)


_KV_KEY = re.compile(r"^[-_=A-Za-z0-9]{1,200}$")


# The routers' own settings that decide a chat besides its copro's policy (`RouterDefaults`),
# written by each router at start in ROUTING_POLICY_BUCKET under this key: a `.` no copro id has.
ROUTER_DEFAULTS_KEY = "router.defaults"


def routing_policy_key(copro_id: str) -> str:
    """The ROUTING_POLICY_BUCKET key of a copro; ValueError for an id that cannot be one."""
    if not _KV_KEY.match(copro_id):
        raise ValueError(f"copro id {copro_id!r}: use 1-200 letters, digits, '-', '_' or '='")
    return copro_id


def cloud_work_durable(deployment: str) -> str:
    """The durable every `inference-cloud` replica serving `deployment` shares on KOPROGO_WORK."""
    return durable_name("cloud", deployment)


_ROUTED_DURABLES = "routed"


def routed_requests_durable(deployment: str) -> str:
    """The durable every `inference-cloud` replica serving `deployment` shares on KOPROGO_EVENTS,
    for the requests gateways routed to it (`routed_chat_requested`)."""
    return durable_name(_ROUTED_DURABLES, deployment)


def routed_edge_requests_durable(model: str, pool: str = SHARED_POOL) -> str:
    """The durable every node of `pool` serving `model` shares on KOPROGO_EVENTS, for the requests
    gateways routed to them (`routed_edge_chat_requested`): `routed-edge_d<pool>_d<model>`, never a
    cloud deployment's (`durable_name` doubles the `_` a deployment's id may hold)."""
    return durable_name(_ROUTED_DURABLES, f"{_ROUTED_EDGE}.{pool}.{model}")


def is_routed_requests_durable(name: str) -> bool:
    """Whether a consumer of KOPROGO_EVENTS is a `routed_requests_durable` (of any deployment) or a
    `routed_edge_requests_durable` (of any pool and model)."""
    return name.startswith(f"{_ROUTED_DURABLES}-")


INBOX_ROOT = "_INBOX"


def inbox_prefix(public_key: str, root: str = INBOX_ROOT) -> str:
    """The inbox prefix of the client holding this nkey (its subscribe permission names it);
    `root`: `_INBOX`, or a building's (`leaf_site.building_inbox_root`)."""
    return f"{root}.{public_key}"


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: list[str]
    retention: str  # "limits" | "workqueue"
    max_age_s: float
    max_bytes: int
    duplicate_window_s: float = 120.0
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    # What a full stream does: "new" refuses the message that does not fit (its publisher gets
    # an error, `publishing.StreamFullError`); "old" would drop the oldest message to make
    # room, whether its consumers had it or not. Messages still leave by age (`max_age_s`).
    discard: str = "new"


DAY_S = 86400.0

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(
        EVENTS_STREAM,
        [EVENTS_ALL],
        "limits",
        max_age_s=30 * DAY_S,
        max_bytes=2 * 1024**3,
        description="Audit log of every KoproGo fact; the ledger projects it into PostgreSQL.",
    ),
    StreamSpec(
        WORK_STREAM,
        [WORK_ALL],
        "workqueue",
        max_age_s=1 * DAY_S,
        max_bytes=512 * 1024**2,
        description="Work for nodes; each item is taken by one consumer and removed once acked.",
    ),
    StreamSpec(
        DEADLETTER_STREAM,
        [f"{DEADLETTER_PREFIX}.>"],
        "limits",
        max_age_s=90 * DAY_S,
        max_bytes=512 * 1024**2,
        description="Messages a consumer could not handle, with the reason in headers.",
        # Full, it refuses too: a refused dead-letter publish leaves the message unacknowledged
        # in its own stream (`decisions._dead_letter_then_term` logs the refusal and NAKs it), so
        # nothing is dropped while the operator reads and purges dead letters (or raises
        # `max_bytes`). Discarding the oldest would lose dead letters nobody had read yet.
        discard="new",
    ),
)
