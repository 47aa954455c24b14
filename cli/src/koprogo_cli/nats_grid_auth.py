"""The grid's part of the NATS identities (`nats_permissions`): what the scheduler, the gateway and
a node may do with tasks, polls and documents.

    identity   publish                                           subscribe
    grid       streams: info only; consumer `grid-scheduler`     its inbox, koprogo.grid.poll.*,
               on KOPROGO_EVENTS (filter koprogo.events.task.>),  koprogo.nodes.heartbeat.*;
               its dead letters; koprogo.events.task.<step>.*    answers polls (allow_responses)
               for its decisions (`verifying` included);
               koprogo.events.grid.node_trust.* (a node's
               standing, NodeTrustChanged); read, write and watch
               the KOPROGO_GRID_TASKS and KOPROGO_GRID_NODES (its
               trust book) buckets; koprogo.cancel.node.>;
               koprogo.nodes.announce; delete a final task's
               document from KOPROGO_DOCUMENTS
    gateway    + koprogo.events.task.{submitted,cancel_requested}.>; write documents to the
               KOPROGO_DOCUMENTS object store; read a TaskSubmitted back from KOPROGO_EVENTS
    node       + koprogo.grid.poll.<its id>, koprogo.events.task.{started,result_reported}.*.
               node.<its id>; read documents of the KOPROGO_DOCUMENTS object store; a node of
               the shared pool, per model M: consumer `grid-M` on KOPROGO_WORK (create with
               filter koprogo.work.grid.M only, info, next, ack) and its dead letters
    router     + koprogo.work.grid.> (long `auto` chats sent to the grid)

Grid chats come from any copro, so only a node of the shared pool may take them (a node minted
for copros works for those copros alone, as the scheduler's tasks do).

A node may read any document of the store (the object store has no per-object permission); the
next part of the grid (signed assignments) narrows what a node is handed, not what it may read.
"""

from __future__ import annotations

from collections.abc import Sequence

from koprogo_shared import subjects
from koprogo_shared.grid_stores import GRID_STREAMS, kv_stream, object_store_stream

# The scheduler's decisions (`koprogo.events.task.<step>.<copro>`).
SCHEDULER_STEPS = ("assigned", "requeued", "verifying", "completed", "failed", "expired", "cancelled")


def _ordered_reader(stream: str) -> list[str]:
    """Read a stream's messages with ephemeral ordered consumers (a KV watch, an object's chunks)."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def scheduler_publish() -> list[str]:
    tasks = kv_stream(subjects.GRID_TASKS_BUCKET)
    trust_book = kv_stream(subjects.GRID_NODES_BUCKET)
    documents = object_store_stream(subjects.DOCUMENTS_BUCKET)
    return [
        *[f"$JS.API.STREAM.INFO.{spec.name}" for spec in subjects.STREAMS],
        f"$JS.API.STREAM.INFO.{object_store_stream(subjects.DOCUMENTS_BUCKET)}",
        f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}.{subjects.GRID_SCHEDULER_DURABLE}.{subjects.TASK_EVENTS_ALL}",
        f"$JS.API.CONSUMER.INFO.{subjects.EVENTS_STREAM}.{subjects.GRID_SCHEDULER_DURABLE}",
        f"$JS.API.CONSUMER.MSG.NEXT.{subjects.EVENTS_STREAM}.{subjects.GRID_SCHEDULER_DURABLE}",
        f"$JS.ACK.{subjects.EVENTS_STREAM}.{subjects.GRID_SCHEDULER_DURABLE}.>",
        subjects.deadletter_for(subjects.TASK_EVENTS_ALL),
        *[f"koprogo.events.task.{step}.*" for step in SCHEDULER_STEPS],
        subjects.GRID_NODE_TRUST_ALL,
        *_ordered_reader(tasks),
        *_ordered_reader(trust_book),
        # Keys are written and purged by messages on the bucket's own subjects (never STREAM.PURGE).
        f"$KV.{subjects.GRID_TASKS_BUCKET}.>",
        f"$KV.{subjects.GRID_NODES_BUCKET}.>",
        "koprogo.cancel.node.>",
        subjects.NODES_ANNOUNCE,
        # A final task's document is deleted (its meta rolled up, its chunks purged by subject).
        f"$JS.API.STREAM.MSG.GET.{documents}",
        f"$JS.API.STREAM.PURGE.{documents}",
        f"$O.{subjects.DOCUMENTS_BUCKET}.>",
    ]


def scheduler_subscribe() -> list[str]:
    # Cloud statuses too: the heartbeat follower (`koprogo_shared.heartbeats`) is the routers'.
    return [subjects.GRID_POLL_ALL, subjects.NODE_HEARTBEAT_ALL, subjects.CLOUD_STATUS_ALL]


def gateway_publish() -> list[str]:
    documents = object_store_stream(subjects.DOCUMENTS_BUCKET)
    return [
        "koprogo.events.task.submitted.>",
        "koprogo.events.task.cancel_requested.>",
        *[f"$JS.API.STREAM.INFO.{stream}" for stream in GRID_STREAMS],
        # A task read back by id while the ledger has not projected it yet.
        f"$JS.API.STREAM.MSG.GET.{subjects.EVENTS_STREAM}",
        *_ordered_reader(documents),
        # Each document under a new name (its task id): a put never purges an older object's chunks.
        f"$O.{subjects.DOCUMENTS_BUCKET}.>",
    ]


def router_publish() -> list[str]:
    return [subjects.GRID_WORK_ALL]


def _grid_chats(models: Sequence[str], pools: Sequence[str]) -> list[str]:
    """Pull the grid's chat work of `models` (shared-pool nodes only), as the edge work is pulled."""
    if subjects.SHARED_POOL not in pools:
        return []
    granted: list[str] = []
    for model in models:
        durable = subjects.grid_work_durable(model)
        subject = subjects.run_inference_grid(model)
        granted += [
            f"$JS.API.CONSUMER.CREATE.{subjects.WORK_STREAM}.{durable}.{subject}",
            f"$JS.API.CONSUMER.INFO.{subjects.WORK_STREAM}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{subjects.WORK_STREAM}.{durable}",
            f"$JS.ACK.{subjects.WORK_STREAM}.{durable}.>",
            subjects.deadletter_for(subject),
        ]
    return granted


def node_publish(node_id: str, models: Sequence[str] = (), pools: Sequence[str] = ()) -> list[str]:
    documents = object_store_stream(subjects.DOCUMENTS_BUCKET)
    return [
        *_grid_chats(models, pools),
        subjects.grid_poll(node_id),
        *subjects.node_task_events(node_id),
        # Read one document: its info message, then its chunks through an ephemeral ordered consumer
        # (created without a name, so no wildcard on the consumer API), flow control answered.
        f"$JS.API.STREAM.INFO.{documents}",
        f"$JS.API.STREAM.MSG.GET.{documents}",
        f"$JS.API.CONSUMER.CREATE.{documents}",
        f"$JS.FC.{documents}.>",
        # nats-py finds the stream of the chunks' subject by asking for stream names (names only).
        "$JS.API.STREAM.NAMES",
    ]
