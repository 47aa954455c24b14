"""The AsyncAPI 3.0.0 catalogue of every NATS subject, generated from the code.

`CHANNELS` is the one table of subject -> message types -> who sends, who receives. The
addresses come from `subjects.py` (a subject function's arguments become the channel
parameters: `chat_completed(copro_id)` -> `koprogo.events.chat.completed.{copro_id}`), the
payloads from the pydantic models of `events.py` and `task_events.py`, and the stream a channel
lives in from `subjects.STREAMS`. Every JetStream channel also gets its dead-letter channel. The
grid's rows (tasks, polls, the scheduler's state, documents) are in `asyncapi_grid`.

`catalogue_gaps()` names the event classes and subject functions the table does not cover;
a unit test keeps it empty, so the catalogue cannot silently drift from the code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from koprogo_shared import asyncapi_grid, events, subjects, task_events
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelivered,
    ChatDelta,
    ChatFailed,
    ChatRequested,
    ChatsDelivered,
    CloudDeploymentStatus,
    Event,
    InferenceAttemptFailed,
    InferenceStarted,
    NodeHeartbeat,
    RoutingPreference,
    RunInference,
    UserDataErasureRequested,
)
from koprogo_shared.grid_stores import object_store_stream
from koprogo_shared.kv_buckets import IDEMPOTENCY_BUCKET
from koprogo_shared.routing.policy_book import RouterDefaults

ASYNCAPI_VERSION = "3.0.0"
CATALOGUE_VERSION = "1.0.0"
SERVER = "nats"
OPERATOR = "operator"

# Subject functions that do not name a channel: they make tokens, names and prefixes.
# (`deadletter_for` names the dead-letter channels the builder derives from each stream channel.)
NOT_CHANNELS = asyncapi_grid.GRID_NOT_CHANNELS | frozenset(
    {
        "subject_token",
        "durable_name",
        "edge_work_durable",
        "cloud_work_durable",
        "routing_policy_key",
        "copro_pool",
        "inbox_prefix",
        "deadletter_for",
        # The node-scoped replies and cancels: the `nodeReply` and `nodeCancel` channels.
        "node_reply",
        "node_replies",
        "node_cancel",
        "node_cancels",
        # The node-scoped outcomes (two parameters): the `nodeChatCompleted` and `nodeChatFailed`
        # channels, their patterns and their parser.
        "node_chat_completed",
        "node_chat_failed",
        "node_outcomes",
        "outcome_sender",
        # The `cloudChatCompleted` channel's parser.
        "is_cloud_answer",
        # The `runInferenceCloud` channel's consumer filter and its parser.
        "cloud_work_filter",
        "cloud_work_copro",
        # The `chatRequestedRouted` channel's consumer filter and durable.
        "routed_requests_filter",
        "routed_requests_durable",
        "is_routed_requests_durable",
        # The `chatRequestedRoutedEdge` channel's consumer filter and durable, and the parser of both
        # routed channels' copro.
        "routed_edge_requests_filter",
        "routed_edge_requests_durable",
        "routed_request_copro",
    }
)

# A subject function, or one with its first arguments bound (`partial(subjects.task_event, "failed")`).
SubjectOf = Callable[..., str]
# The modules whose `Event` subclasses must each travel on some channel.
EVENT_MODULES = (events, task_events)


@dataclass(frozen=True, slots=True)
class Channel:
    """One row of the catalogue: a subject (function or address template) and its contract."""

    key: str
    subject: SubjectOf | str
    messages: tuple[type[BaseModel], ...]
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    summary: str
    # A payload that is no model: (name, JSON Schema), e.g. the empty announce request.
    raw_payload: tuple[str, dict[str, Any]] | None = None
    raw_content_type: str | None = None
    # (name, description) of parameters that are not `subjects.subject_token`s of a free value.
    parameters: tuple[tuple[str, str], ...] = ()
    # The key of the channel the receiver answers on (core NATS request/reply).
    reply: str | None = None


_REPLY = (ChatCompleted, ChatFailed, InferenceStarted, ChatDelta)
_KV_ROUTING = f"$KV.{subjects.ROUTING_POLICY_BUCKET}.{{copro_id}}"
_KV_RATE = f"$KV.{subjects.RATE_LIMIT_BUCKET}.{{counter}}"
_KV_IDEMPOTENCY = f"$KV.{IDEMPOTENCY_BUCKET}.{{key}}"

CHANNELS: tuple[Channel, ...] = (
    Channel("chatRequested", subjects.chat_requested, (ChatRequested,), ("gateway",), ("router", "ledger"),
            "A user asked for a chat completion; the router plans it, the ledger records it."),
    Channel("chatRequestedRouted", subjects.routed_chat_requested, (ChatRequested,), ("gateway",), ("cloud", "ledger"),
            "A chat the gateway routed itself to a cloud deployment (its plan in `routed`): stored once, "
            "taken by the deployment's workers (shared durable `routed-<deployment>`) as the router's "
            "work item; the ledger records it; the router never sees it."),
    Channel("chatRequestedRoutedEdge", subjects.routed_edge_chat_requested, (ChatRequested,), ("gateway",),
            ("edge", "ledger"),
            "A chat the gateway routed itself to the edge nodes of a pool serving a model (its plan in "
            "`routed`): stored once, taken by those nodes (shared durable `routed-edge_d<pool>_d<model>`) as "
            "the router's work item; the ledger records it; the router never sees it."),
    Channel("chatCompleted", subjects.chat_completed, (ChatCompleted,), (), ("ledger",),
            "A model answered a chat: content, usage, where it ran and its CO2. Only an edge node "
            "without a key sends here, on a server without authorization; with keys, nodes and the "
            "cloud worker have their own subjects (nodeChatCompleted, cloudChatCompleted)."),
    Channel("cloudChatCompleted", subjects.cloud_chat_completed, (ChatCompleted,), ("cloud",), ("ledger",),
            "A cloud deployment answered a chat: a work item redelivered after its answer was stored "
            "is answered from it (looked for by its Nats-Msg-Id), the provider is not paid twice."),
    Channel("chatFailed", subjects.chat_failed, (ChatFailed,), ("router", "gateway", "cloud"),
            ("ledger",), "A chat could not be answered; `status` is the caller's HTTP status."),
    Channel("nodeChatCompleted", "koprogo.events.chat.completed.{copro_id}.node.{node_id}", (ChatCompleted,), ("edge",), ("ledger",),
            "An edge node holding a key answered a chat: only its key may publish on its `node_id`; "
            "the ledger dead-letters a completion naming another node."),
    Channel("nodeChatFailed", "koprogo.events.chat.failed.{copro_id}.node.{node_id}", (ChatFailed,), ("edge",), ("ledger",),
            "An edge node holding a key could not answer a chat (only its key may publish on its `node_id`)."),
    Channel("chatDelivered", subjects.chat_delivered, (ChatsDelivered, ChatDelivered), ("gateway",), ("ledger",),
            "The gateway handed answers to their callers: one ChatsDelivered lists the deliveries of a "
            "copro that finished while the previous one was being stored (the ledger reads each as a "
            "ChatDelivered, of which gateways before issue 17 stored one per answer)."),
    Channel("userErasureRequested", subjects.user_erasure_requested, (UserDataErasureRequested,),
            ("gateway",), ("ledger",), "A user's stored contents must be erased (GDPR)."),
    Channel("inferenceAttemptFailed", subjects.inference_attempt_failed, (InferenceAttemptFailed,),
            ("cloud",), ("router", "ledger"), "One target failed a work item; the router falls back."),
    Channel("runInferenceEdge", subjects.run_inference_edge, (RunInference,), ("router",), ("edge",),
            "Work for the edge nodes of `pool` (the shared pool, or a copro's own) serving `model` (one "
            "durable per pool and model: one node takes it)."),
    Channel("runInferenceCloud", subjects.run_inference_cloud, (RunInference,), ("router",), ("cloud",),
            "Work for a cloud deployment, for a copro (`_`: none), shared durable `cloud-<deployment>`; "
            "the worker dead-letters an item whose body names another copro."),
    Channel("nodeHeartbeat", subjects.node_heartbeat, (NodeHeartbeat,), ("edge",), ("router", "gateway", "grid"),
            "An edge node is alive: what it serves, how busy it is, what it emits (the grid scheduler "
            "believes a poll only from a node that heartbeats the task types it asks for)."),
    Channel("cloudStatus", subjects.cloud_status, (CloudDeploymentStatus,), ("cloud",), ("router", "gateway", "grid"),
            "A cloud deployment's heartbeat: models, availability, footprint."),
    Channel("nodesAnnounce", subjects.NODES_ANNOUNCE, (), ("router", "gateway", "grid"), ("edge", "cloud"),
            "A newcomer asks every node and deployment to send its heartbeat now.",
            raw_payload=("AnnounceRequest", {"type": "string", "maxLength": 0, "description": "Empty."})),
    Channel("gatewayReply", subjects.gateway_reply, _REPLY, ("router", "cloud"), ("gateway",),
            "Answers for the gateway instance waiting on the request (`reply_subject`), deltas when streamed."),
    Channel("nodeReply", "koprogo.reply.{gateway_id}.node.{node_id}", _REPLY, ("edge",), ("gateway",),
            "An edge node's answers to the gateway (`subjects.node_reply`): taken only from the node "
            "that said it runs the request."),
    Channel("chatCancel", subjects.chat_cancel, (), ("gateway",), ("cloud",),
            "The caller of a chat left, timed out or cancelled it (`POST /mcp/v1/chat/cancel`): the cloud "
            "worker closes the provider call; an edge node without a NATS key (its cancels otherwise come "
            "on `nodeCancel`) stops at the next token.",
            raw_payload=("CancelRequest", {"description": "Ignored: the subject alone says the caller left."})),
    Channel("nodeCancel", "koprogo.cancel.node.{node_id}.{request_id}", (), ("gateway", "grid"), ("edge",),
            "The caller of a chat left, timed out or cancelled it: the edge node running it (and no other) stops "
            "at the next token; or the grid scheduler took back a task the node runs (`request_id` is "
            "then the task id: cancelled, expired, or past its attempt's deadline).",
            raw_payload=("NodeCancelRequest", {"description": "Ignored: the subject alone says the caller left."})),
    Channel("routingPolicy", _KV_ROUTING, (RoutingPreference,), ("gateway",), ("router", "gateway"),
            f"A copro's default routing policy: key-value bucket {subjects.ROUTING_POLICY_BUCKET}, watched."),
    Channel("routerDefaults", f"$KV.{subjects.ROUTING_POLICY_BUCKET}.{subjects.ROUTER_DEFAULTS_KEY}",
            (RouterDefaults,), ("router",), ("gateway",),
            "The routers' own defaults (DEFAULT_ROUTING_POLICY, GRID_MIN_*), stored by each router at start in "
            f"key-value bucket {subjects.ROUTING_POLICY_BUCKET}: a gateway routes a cloud chat itself only by them."),
    Channel("rateLimitCounter", _KV_RATE, (), ("gateway",), ("gateway",),
            f"The gateways' rate-limit counters: key-value bucket {subjects.RATE_LIMIT_BUCKET} (internal).",
            raw_payload=("RateLimitCount", {"type": "string", "pattern": "^[0-9]+$"})),
    Channel("idempotencyKey", _KV_IDEMPOTENCY, (), ("gateway",), ("gateway",),
            f"The gateways' idempotency keys: key-value bucket {IDEMPOTENCY_BUCKET} (internal), one entry "
            "per user and `Idempotency-Key` (the key is a hash of both), kept 24 h.",
            raw_payload=("IdempotencyEntry", {"type": "object", "description": "JSON: the request id a key "
                         "runs as, a fingerprint of its body, its deadline and reply subject, its outcome once known."})),
    *asyncapi_grid.grid_channels(),
)  # fmt: skip

_PARAM = "koprogoparam"
_JETSTREAM_HEADERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {"type": "string", "description": "The event `id`: JetStream de-duplicates retries."},
        "ce-type": {"type": "string", "description": "The event `type` (CloudEvents)."},
        "ce-source": {"type": "string", "description": "The event `source` (CloudEvents)."},
    },
}


def subject_function_name(subject: SubjectOf) -> str:
    """`task_event` for `subjects.task_event` and for `partial(subjects.task_event, "failed")`."""
    return subject.func.__name__ if isinstance(subject, partial) else subject.__name__


def channel_address(channel: Channel) -> str:
    """`koprogo.events.chat.completed.{copro_id}` from `subjects.chat_completed`."""
    if isinstance(channel.subject, str):
        return channel.subject
    names = list(inspect.signature(channel.subject).parameters)
    address = channel.subject(*(f"{_PARAM}{i}" for i in range(len(names))))
    for i, name in enumerate(names):
        address = address.replace(f"{_PARAM}{i}", "{" + name + "}")
    return address


def address_pattern(address: str) -> str:
    """The NATS pattern an address stands for: each `{parameter}` is one token (`*`)."""
    return ".".join("*" if token.startswith("{") else token for token in address.split("."))


def subjects_overlap(a: str, b: str) -> bool:
    """True when some subject matches both NATS patterns (`*` one token, `>` the rest)."""
    left, right = a.split("."), b.split(".")
    for i, token in enumerate(left):
        if i >= len(right):
            return False
        if token == ">" or right[i] == ">":
            return True
        if token != right[i] and "*" not in (token, right[i]):
            return False
    return len(left) == len(right)


def stream_of(address: str) -> subjects.StreamSpec | None:
    pattern = address_pattern(address)
    for spec in subjects.STREAMS:
        if any(subjects_overlap(pattern, s) for s in spec.subjects):
            return spec
    return None


def catalogue_gaps() -> list[str]:
    """Event classes and subject functions of the code that `CHANNELS` does not cover."""
    listed_models = {m for c in CHANNELS for m in c.messages}
    event_classes = {
        cls
        for module in EVENT_MODULES
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Event) and cls is not Event
    }
    gaps = [
        f"event {cls.__name__}: no channel in CHANNELS carries it"
        for cls in sorted(event_classes - listed_models, key=lambda cls: cls.__name__)
    ]
    listed_functions = {subject_function_name(c.subject) for c in CHANNELS if not isinstance(c.subject, str)}
    gaps += [
        f"subject function {name}: add a channel to CHANNELS (or to NOT_CHANNELS if it names none)"
        for name, fn in inspect.getmembers(subjects, inspect.isfunction)
        if fn.__module__ == subjects.__name__ and not name.startswith("_")
        if name not in listed_functions and name not in NOT_CHANNELS
    ]
    return gaps


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n\n")[0].replace("\n", " ")


def _model_messages() -> tuple[dict[str, Any], dict[str, Any]]:
    models = sorted({m for c in CHANNELS for m in c.messages}, key=lambda m: m.__name__)
    _, top = models_json_schema(
        [(m, "serialization") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    # Fields a publisher leaves out under a condition (`Field(exclude_if=...)`, e.g.
    # `RunInference.may_be_answered` when false), by model.
    conditional = {
        m.__name__: {name for name, f in m.model_fields.items() if f.exclude_if is not None} for m in models
    }
    for model_name, schema in schemas.items():
        # Publishers write every other field (`model_dump_json()`), defaults and nulls included.
        if "properties" in schema:
            left_out = conditional.get(model_name, set())
            schema["required"] = [p for p in schema["properties"] if p not in left_out]
    messages: dict[str, Any] = {}
    for model in models:
        message: dict[str, Any] = {
            "name": model.__name__,
            "title": model.__name__,
            "summary": _first_line(model.__doc__),
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        }
        event_type = model.model_fields.get("type")
        if event_type is not None and isinstance(event_type.default, str):
            message["name"] = event_type.default
        messages[model.__name__] = message
    for channel in CHANNELS:
        if channel.raw_payload is not None:
            name, payload = channel.raw_payload
            messages[name] = {"name": name, "title": name, "summary": channel.summary, "payload": payload}
            if channel.raw_content_type is not None:
                messages[name]["contentType"] = channel.raw_content_type
    return messages, schemas


def _message_names(channel: Channel) -> list[str]:
    names = [m.__name__ for m in channel.messages]
    return names + ([channel.raw_payload[0]] if channel.raw_payload else [])


def _channel_object(channel: Channel, address: str, summary: str, names: list[str]) -> dict[str, Any]:
    spec = stream_of(address)
    if spec is not None:
        where = f"JetStream stream {spec.name} ({spec.retention} retention, kept {spec.max_age_s / 86400:g} days)."
        stream: dict[str, Any] = {
            "stream": spec.name,
            "retention": spec.retention,
            "max_age_s": spec.max_age_s,
        }
    elif address.startswith("$KV."):
        where = "JetStream key-value bucket (latest value per key)."
        stream = {"stream": "KV_" + address.split(".")[1], "retention": "limits"}
    elif address.startswith("$O."):
        bucket = address.split(".")[1]
        max_age_s = asyncapi_grid.OBJECT_STORES[bucket]
        where = (
            f"JetStream object store (stream {object_store_stream(bucket)}, kept {max_age_s / 86400:g} days)."
        )
        stream = {"stream": object_store_stream(bucket), "retention": "limits", "max_age_s": max_age_s}
    else:
        where = "Core NATS: not persisted, only live subscribers receive it."
        stream = {"stream": None}
    described = dict(channel.parameters)
    parameters = {
        token[1:-1]: {
            "description": described.get(
                token[1:-1], f"`{token[1:-1]}` as one subject token (`subjects.subject_token`)."
            )
        }
        for token in address.split(".")
        if token.startswith("{")
    }
    obj: dict[str, Any] = {
        "address": address,
        "title": summary.split(":")[0].split(";")[0][:80],
        "description": f"{summary} {where}",
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in names},
        "servers": [{"$ref": f"#/servers/{SERVER}"}],
        "x-koprogo-stream": stream,
    }
    if parameters:
        obj["parameters"] = parameters
    return obj


def _reply(channel: Channel) -> dict[str, Any]:
    """The Operation Reply Object of a request channel: the reply channel and its messages."""
    (answer,) = [c for c in CHANNELS if c.key == channel.reply]
    return {
        "channel": {"$ref": f"#/channels/{answer.key}"},
        "messages": [{"$ref": f"#/channels/{answer.key}/messages/{name}"} for name in _message_names(answer)],
    }


def _operations(key: str, channel: Channel, senders: tuple[str, ...], receivers: tuple[str, ...]) -> dict:
    names = _message_names(channel)
    ops: dict[str, Any] = {}
    for action, services in (("send", senders), ("receive", receivers)):
        for service in services:
            op: dict[str, Any] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{key}"},
                "messages": [{"$ref": f"#/channels/{key}/messages/{name}"} for name in names],
                "summary": f"{service} {action}s on {key}.",
                "tags": [{"name": service}],
                "x-koprogo-service": service,
            }
            if channel.reply is not None and key == channel.key:
                op["reply"] = _reply(channel)
            ops[f"{service}{action.title()}{key[0].upper()}{key[1:]}"] = op
    return ops


def build_document(nats_host: str = "localhost:4222") -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document (a JSON-ready dict) of every KoproGo subject."""
    messages, schemas = _model_messages()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel in CHANNELS:
        address = channel_address(channel)
        names = _message_names(channel)
        channels[channel.key] = _channel_object(channel, address, channel.summary, names)
        operations |= _operations(channel.key, channel, channel.senders, channel.receivers)
        if stream_of(address) is not None:
            # Whoever consumes it dead-letters what it can never handle, headers saying why.
            dead_key = f"deadLetter{channel.key[0].upper()}{channel.key[1:]}"
            summary = (
                f"{channel.key} messages a consumer could not handle (headers KoproGo-Dead-Reason, "
                "KoproGo-Original-Subject); kept for an operator."
            )
            dead_address = subjects.deadletter_for(address)
            channels[dead_key] = _channel_object(channel, dead_address, summary, names)
            operations |= _operations(dead_key, channel, channel.receivers, (OPERATOR,))
    # Events published with `publish_event` carry their id and type in headers too.
    for name in {m.__name__ for c in CHANNELS for m in c.messages if stream_of(channel_address(c))}:
        messages[name]["headers"] = _JETSTREAM_HEADERS
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "KoproGo Symbiose events",
            "version": CATALOGUE_VERSION,
            "description": (
                "Every NATS subject of KoproGo Symbiose: facts in KOPROGO_EVENTS (the audit log, the grid's "
                "task events included), work in KOPROGO_WORK (one consumer takes each item), heartbeats, "
                "replies and grid polls on core NATS, state in key-value buckets, task documents in an "
                "object store. "
                "Payloads are JSON with a CloudEvents-like envelope (`specversion`, `id`, `source`, "
                "`type`, `time`); `copro_id` is the tenant. Generated from the code "
                "(`koprogo_shared.asyncapi`)."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            SERVER: {
                "host": nats_host,
                "protocol": "nats",
                "description": "The deployment's NATS server; each client authenticates with its own nkey.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
