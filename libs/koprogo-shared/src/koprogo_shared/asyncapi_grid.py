"""The grid's rows of the AsyncAPI catalogue (`asyncapi.CHANNELS`): tasks, their verification, the
nodes' standing, polls, state, documents, and the long chats the router sends to the grid.

A task's steps are one subject function with the step as first argument (`subjects.task_event`,
`subjects.node_task_event`): each step is its own channel, addressed by that function with the
step bound (`functools.partial`), so the addresses still come from `subjects.py`.

The rows are built by a function because they are `asyncapi.Channel`s and `asyncapi` imports
this module: importing `Channel` when the table is built, not when this module loads, keeps
either import order working.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from koprogo_shared import subjects
from koprogo_shared.events import RunInference
from koprogo_shared.grid_stores import DOCUMENT_TTL_S
from koprogo_shared.task_events import (
    GridPoll,
    GridPollReply,
    NodeTrustChanged,
    TaskAssigned,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskExpired,
    TaskFailed,
    TaskRequeued,
    TaskResultReported,
    TaskStarted,
    TaskSubmitted,
    TaskVerifying,
)

if TYPE_CHECKING:
    from koprogo_shared.asyncapi import Channel

# Subject functions of the grid that name no channel of their own.
GRID_NOT_CHANNELS = frozenset(
    {
        # Their first argument is a step: each step is a channel below (`partial` binds it).
        "task_event",
        "node_task_event",
        # The patterns a node may publish its reports on, and the parsers of node and poll subjects.
        "node_task_events",
        "task_sender",
        "poll_sender",
        # The consumer name of the grid's chat work (`runInferenceGrid`).
        "grid_work_durable",
    }
)

# Object stores (JetStream streams `OBJ_<bucket>`) and how long they keep an object.
OBJECT_STORES: dict[str, float] = {subjects.DOCUMENTS_BUCKET: DOCUMENT_TTL_S}

_KV_GRID_TASKS = f"$KV.{subjects.GRID_TASKS_BUCKET}.{{task_id}}"
_KV_GRID_NODES = f"$KV.{subjects.GRID_NODES_BUCKET}.{{node_id}}"
_DOCUMENT_INFO = f"$O.{subjects.DOCUMENTS_BUCKET}.M.{{encoded_name}}"
_DOCUMENT_CHUNKS = f"$O.{subjects.DOCUMENTS_BUCKET}.C.{{nuid}}"
# nats-py sends a request from the client's own inbox (`subjects.inbox_prefix`): the reply
# subject is `_INBOX.<public nkey>.<nuid>.<n>`, whatever the permissions call `_INBOX.<key>.>`.
_NODE_INBOX = "_INBOX.{public_key}.>"

_TASK_STATE: dict[str, Any] = {
    "type": "object",
    "description": "JSON: the TaskSubmitted, its status, attempt, node, deadlines, attempts so far and "
    "the events its last transition produced (published after the state is stored, again after a "
    "restart); a final task keeps a tombstone without its parameters.",
}
_NODE_STANDING: dict[str, Any] = {
    "type": "object",
    "description": "JSON: a node's standing in the scheduler's trust book: its owner, the public key it "
    "signs with (the roster's, or the first it announced without a roster), trusted or not, its run "
    "of valid results and its validated, invalid, refused and flagged counts.",
}
_OBJECT_INFO: dict[str, Any] = {
    "type": "object",
    "description": "JSON (nats object store meta): the object's name, bucket, nuid (its chunks' "
    "subject), size, chunks, digest `SHA-256=<base64url>`, mtime, and `deleted` once deleted.",
    "properties": {
        "name": {"type": "string"},
        "bucket": {"type": "string"},
        "nuid": {"type": "string"},
        "size": {"type": "integer"},
        "chunks": {"type": "integer"},
        "digest": {"type": "string"},
        "deleted": {"type": "boolean"},
    },
}
_CHUNK: dict[str, Any] = {
    "type": "string",
    "contentEncoding": "binary",
    "description": "Raw bytes: one chunk (128 KiB at most) of the document, in order.",
}


def grid_channels() -> tuple[Channel, ...]:
    from koprogo_shared.asyncapi import Channel

    def decision(key: str, step: str, model: type[BaseModel], summary: str) -> Channel:
        return Channel(
            key,
            partial(subjects.task_event, step),
            (model,),
            ("grid",),
            ("ledger",),
            summary + " The scheduler's decision; its own durable sees it pass.",
        )

    def node_report(key: str, step: str, model: type[BaseModel], summary: str) -> Channel:
        return Channel(
            key,
            partial(subjects.node_task_event, step),
            (model,),
            ("edge",),
            ("grid", "ledger"),
            summary + " Only the node's key may publish on its `node_id`; the scheduler refuses a "
            "report whose subject's node is not the body's `node_id`, or not the attempt's.",
        )

    return (
        Channel("taskSubmitted", subjects.task_submitted_key, (TaskSubmitted,), ("gateway",), ("grid", "ledger"),
                "A user submitted a grid task (`POST /mcp/v1/execute`): its type, parameters and a reference "
                "to its document in the object store, never the document. Keyed by task, so the gateway "
                "reads it back by id (`$JS.API.STREAM.MSG.GET`) before the ledger has projected it."),
        Channel("taskCancelRequested", partial(subjects.task_event, "cancel_requested"), (TaskCancelRequested,),
                ("gateway",), ("grid", "ledger"),
                "A user asked to cancel a task still pending or running (`DELETE /mcp/v1/tasks/{id}`); "
                "the scheduler decides (taskCancelled)."),
        decision("taskAssigned", "assigned", TaskAssigned,
                 "A node polled and took an attempt of a task, to finish by `deadline`."),
        decision("taskRequeued", "requeued", TaskRequeued,
                 "An attempt was taken back (`reason`: the node failed it, died, never started or missed "
                 "its deadline) and the task queued again."),
        decision("taskVerifying", "verifying", TaskVerifying,
                 "A replica's signed result is in and the task waits for more to agree (verification by "
                 "redundancy, docs/grid-trust.md): its `verification` names the policy, the quorum and "
                 "each replica's node, owner and verdict so far."),
        decision("taskCompleted", "completed", TaskCompleted,
                 "The scheduler accepted a result (by a quorum of distinct owners, or from a trusted node): "
                 "the task is done, with its usage, CO2 and `verification` (the ledger pays from it)."),
        decision("taskFailed", "failed", TaskFailed,
                 "The task failed for good: its input cannot be processed, or its attempts ran out."),
        decision("taskExpired", "expired", TaskExpired, "No node finished the task before its `expires_at`."),
        decision("taskCancelled", "cancelled", TaskCancelled, "The task was cancelled at its submitter's request."),
        node_report("taskStarted", "started", TaskStarted, "A node began running its attempt."),
        node_report("taskResultReported", "result_reported", TaskResultReported,
                    "A node's report of its attempt: a result, or why there is none (the scheduler decides)."),
        Channel("runInferenceGrid", subjects.run_inference_grid, (RunInference,), ("router",), ("edge",),
                "Long `auto` chats for the grid: work for the shared pool's nodes that joined the grid and "
                "serve `model` (one durable `grid-<model>` per model: one node takes it)."),
        Channel("gridPoll", subjects.grid_poll, (GridPoll,), ("edge",), ("grid",),
                "A node asks the scheduler for work (a request: the scheduler holds it up to `wait_s`, "
                "then answers on gridPollReply); only the node's key may poll as its `node_id`.",
                reply="gridPollReply"),
        Channel("gridPollReply", _NODE_INBOX, (GridPollReply,), ("grid",), ("edge",),
                "The scheduler's answer to a poll, on the polling node's own inbox (the request's reply "
                "subject, which the scheduler may answer: allow_responses): an assignment, or none and why.",
                parameters=(("public_key", "The node's public nkey (its inbox prefix, `subjects.inbox_prefix`)."),)),
        Channel("nodeTrustChanged", subjects.grid_node_trust, (NodeTrustChanged,), ("grid",), ("ledger",),
                "A node's standing on the grid changed: it earned trust (the ledger releases its escrow), "
                "was caught wrong or sent a report that failed the signature checks (its escrow is "
                "forfeited to the solidarity fund), or its energy attestation was implausible. Only the "
                "scheduler's key may publish here."),
        Channel("gridNodes", _KV_GRID_NODES, (), ("grid",), ("grid",),
                f"The scheduler's trust book: key-value bucket {subjects.GRID_NODES_BUCKET} (internal), one "
                "key per node, so the trust a node earned survives a restart.",
                raw_payload=("GridNodeStanding", _NODE_STANDING),
                parameters=(("node_id", "The node id, the key itself."),)),
        Channel("gridTasks", _KV_GRID_TASKS, (), ("grid",), ("grid",),
                f"The scheduler's state: key-value bucket {subjects.GRID_TASKS_BUCKET} (internal), one key "
                "per task, stored before any event or answer goes out, read back at start.",
                raw_payload=("GridTaskState", _TASK_STATE),
                parameters=(("task_id", "The task id (a UUID), the key itself."),)),
        Channel("documentInfo", _DOCUMENT_INFO, (), ("gateway", "grid"), ("edge", "grid"),
                f"A task document's meta in the object store {subjects.DOCUMENTS_BUCKET}: written by the "
                "gateway under the task id, read by the node that runs the task; once the task's decision "
                "is published the scheduler reads it and rolls it up to a deleted marker.",
                raw_payload=("DocumentObjectInfo", _OBJECT_INFO),
                parameters=(("encoded_name", "The object name (the task id), base64url-encoded."),)),
        Channel("documentChunks", _DOCUMENT_CHUNKS, (), ("gateway",), ("edge",),
                f"A task document's bytes in the object store {subjects.DOCUMENTS_BUCKET}, in chunks; the "
                "node checks their size and SHA-256 against the task's `DocumentRef`. The scheduler purges "
                "them (`$JS.API.STREAM.PURGE` by subject) once the task is final.",
                raw_payload=("DocumentChunk", _CHUNK), raw_content_type="application/octet-stream",
                parameters=(("nuid", "The object's nuid, from its meta (documentInfo)."),)),
    )  # fmt: skip
