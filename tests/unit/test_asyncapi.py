"""The AsyncAPI catalogue: valid AsyncAPI 3.0.0, complete, and in line with the NATS permissions.

`asyncapi_spec/asyncapi-3.0.0.json` is the official JSON Schema of AsyncAPI 3.0.0, vendored
unchanged from the npm package `@asyncapi/specs` 6.11.1 (`schemas/3.0.0.json`, Apache-2.0,
LICENSE beside it): no PyPI package ships it, and tests fetch nothing.
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
import jsonschema
import pytest
from fastapi import FastAPI

from koprogo_cli import nats_permissions
from koprogo_gateway.entrypoints.http import routes_asyncapi
from koprogo_shared import asyncapi, events, grid_stores, subjects, task_events
from koprogo_shared.asyncapi import address_pattern, build_document, catalogue_gaps, subjects_overlap

SPEC = Path(__file__).parent / "asyncapi_spec" / "asyncapi-3.0.0.json"


@cache
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SPEC.read_text()))


def channel_patterns(document: dict[str, Any]) -> list[str]:
    return [address_pattern(channel["address"]) for channel in document["channels"].values()]


def permissions() -> dict[str, nats_permissions.Permissions]:
    key = "UKEY"
    return {
        "ledger": nats_permissions.ledger_permissions(key),
        "router": nats_permissions.router_permissions(key),
        "gateway": nats_permissions.gateway_permissions(key),
        "cloud": nats_permissions.cloud_permissions(key, ["anthropic-eu"]),
        "edge": nats_permissions.node_permissions(key, "pi-1", ["qwen2.5-0.5b"]),
        "grid": nats_permissions.grid_permissions(key),
    }


def test_every_service_identity_is_checked_against_the_catalogue() -> None:
    assert set(nats_permissions.SERVICES) | {"edge"} == set(permissions())


def test_the_catalogue_is_valid_asyncapi_3_0_0() -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator().iter_errors(build_document())
    ]
    assert errors == []


def test_the_official_schema_refuses_a_broken_catalogue() -> None:
    wrong_action = build_document()
    wrong_action["operations"]["gatewaySendChatRequested"]["action"] = "publish"  # AsyncAPI 2 wording
    no_version = build_document()
    del no_version["info"]["version"]
    unknown_field = build_document()
    unknown_field["channels"]["chatCompleted"]["subject"] = "koprogo.events.chat.completed.{copro_id}"
    for broken in (wrong_action, no_version, unknown_field):
        assert list(validator().iter_errors(broken)) != []


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_every_reference_resolves_and_operations_use_their_channels_messages() -> None:
    document = build_document()
    for ref in refs(document):
        resolve(document, ref)
    for name, operation in document["operations"].items():
        assert operation["action"] in {"send", "receive"}, name
        channel_ref = operation["channel"]["$ref"]
        assert operation["messages"], name
        assert all(m["$ref"].startswith(channel_ref + "/messages/") for m in operation["messages"]), name
        if "reply" in operation:
            reply_ref = operation["reply"]["channel"]["$ref"]
            assert operation["reply"]["messages"], name
            assert all(m["$ref"].startswith(reply_ref + "/messages/") for m in operation["reply"]["messages"])


def test_a_grid_poll_is_a_request_answered_on_the_nodes_inbox() -> None:
    document = build_document()
    for name in ("edgeSendGridPoll", "gridReceiveGridPoll"):
        reply = resolve(document, document["operations"][name]["reply"]["channel"]["$ref"])
        assert reply["address"] == "_INBOX.{public_key}.>"
        assert list(reply["messages"]) == ["GridPollReply"]
    assert document["channels"]["gridPoll"]["address"] == "koprogo.grid.poll.{node_id}"


def test_message_payloads_are_json_schemas_of_the_event_models() -> None:
    document = build_document()
    messages = document["components"]["messages"]
    completed = resolve(document, messages["ChatCompleted"]["payload"]["$ref"])
    jsonschema.Draft7Validator.check_schema(completed)
    assert messages["ChatCompleted"]["name"] == "koprogo.chat.completed.v1"
    assert {"request_id", "content", "usage", "execution_info"} <= set(completed["required"])
    assert completed["properties"]["usage"] == {"$ref": "#/components/schemas/Usage"}
    assert "$defs" not in json.dumps(document)


def test_a_field_left_out_when_false_is_described_and_not_required() -> None:
    document = build_document()
    run = resolve(document, document["components"]["messages"]["RunInference"]["payload"]["$ref"])
    assert "may_be_answered" in run["properties"] and "may_be_answered" not in run["required"]
    assert run["properties"]["may_be_answered"]["description"].startswith("An answer to this work")
    assert {"request_id", "messages", "reply_subject", "deadline"} <= set(run["required"])


def test_every_event_class_and_subject_function_is_in_the_catalogue() -> None:
    assert catalogue_gaps() == []


def test_a_new_event_or_subject_function_missing_from_the_table_is_a_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class ChatAbandoned(events.Event):
        type: Literal["koprogo.chat.abandoned.v1"] = "koprogo.chat.abandoned.v1"

    def chat_abandoned(copro_id: str) -> str:
        return f"koprogo.events.chat.abandoned.{copro_id}"

    chat_abandoned.__module__ = subjects.__name__
    monkeypatch.setattr(events, "ChatAbandoned", ChatAbandoned, raising=False)
    monkeypatch.setattr(subjects, "chat_abandoned", chat_abandoned, raising=False)
    gaps = catalogue_gaps()
    assert any("ChatAbandoned" in gap for gap in gaps)
    assert any("chat_abandoned" in gap for gap in gaps)


def test_a_new_task_event_missing_from_the_table_is_a_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    class TaskVerified(events.Event):
        type: Literal["koprogo.task.verified.v1"] = "koprogo.task.verified.v1"

    monkeypatch.setattr(task_events, "TaskVerified", TaskVerified, raising=False)
    assert "event TaskVerified: no channel in CHANNELS carries it" in catalogue_gaps()


def test_every_task_event_and_grid_message_has_its_json_schema() -> None:
    document = build_document()
    messages = document["components"]["messages"]
    union, _discriminator = get_args(task_events.TaskEvent)
    for model in (*get_args(union), task_events.GridPoll, task_events.GridPollReply):
        schema = resolve(document, messages[model.__name__]["payload"]["$ref"])
        jsonschema.Draft7Validator.check_schema(schema)
        assert set(schema["required"]) == set(model.model_fields), model.__name__
    assert messages["TaskSubmitted"]["name"] == "koprogo.task.submitted.v1"
    assert "headers" in messages["TaskCompleted"] and "headers" not in messages["GridPoll"]


def used_subjects() -> list[str]:
    """Every subject the code names: constants, streams, buckets, functions, permissions."""
    found = [s for spec in subjects.STREAMS for s in spec.subjects]
    for name, value in vars(subjects).items():
        if name.isupper() and isinstance(value, str):
            if name.endswith("_BUCKET"):
                # An object store's subjects are `$O.<bucket>.>`, a key-value bucket's `$KV.<bucket>.>`.
                store = grid_stores.object_store_stream(value) in grid_stores.GRID_STREAMS
                found.append(f"{'$O' if store else '$KV'}.{value}.>")
            elif name.endswith("_PREFIX"):
                found.append(f"{value}.>")
            elif value.startswith("koprogo."):
                found.append(value)
    for name, function in inspect.getmembers(subjects, inspect.isfunction):
        if function.__module__ == subjects.__name__ and name not in asyncapi.NOT_CHANNELS:
            required = [p for p in inspect.signature(function).parameters.values() if p.default is p.empty]
            found.append(function(*["some-value"] * len(required)))
    for granted in permissions().values():
        found += [s for s in (*granted.publish, *granted.subscribe) if not s.startswith(("$JS.", "_INBOX."))]
    return found


def test_every_subject_the_services_use_maps_to_a_channel() -> None:
    patterns = channel_patterns(build_document())
    unmapped = [s for s in used_subjects() if not any(subjects_overlap(s, p) for p in patterns)]
    assert unmapped == []
    assert subjects_overlap("koprogo.events.chat.completed.c1", "koprogo.events.chat.completed.*")
    assert not subjects_overlap("koprogo.events.chat.failed.c1", "koprogo.events.chat.completed.*")


def allowed(granted: nats_permissions.Permissions, action: str, address: str) -> bool:
    """May this identity send on / receive from the channel (core subscribe or a consumer's filter)?"""
    pattern = address_pattern(address)
    if action == "send" and address.startswith("_INBOX."):
        # A reply to a request's inbox: only an identity allowed to answer what it received.
        return granted.allow_responses
    if action == "send":
        return any(subjects_overlap(pattern, s) for s in granted.publish)
    if any(subjects_overlap(pattern, s) for s in granted.subscribe):
        return True
    if address.startswith("$KV."):
        return any(f".KV_{address.split('.')[1]}" in s for s in granted.publish)
    if address.startswith("$O."):
        # An object's meta is read by subject (last message), its chunks by an ordered consumer.
        stream = grid_stores.object_store_stream(address.split(".")[1])
        api = "STREAM.MSG.GET" if address.split(".")[2] == "M" else "CONSUMER.CREATE"
        return f"$JS.API.{api}.{stream}" in granted.publish
    creates = [s.split(".", 6) for s in granted.publish if s.startswith("$JS.API.CONSUMER.CREATE.")]
    return any(len(parts) == 7 and subjects_overlap(pattern, parts[6]) for parts in creates)


def test_who_sends_and_receives_agrees_with_the_nats_permissions() -> None:
    document = build_document()
    granted = permissions()
    refused = [
        name
        for name, operation in document["operations"].items()
        if operation["x-koprogo-service"] != asyncapi.OPERATOR
        if not allowed(
            granted[operation["x-koprogo-service"]],
            operation["action"],
            resolve(document, operation["channel"]["$ref"])["address"],
        )
    ]
    assert refused == []


async def test_the_gateway_serves_the_document_and_a_readable_page_without_a_token() -> None:
    app = FastAPI()
    app.include_router(routes_asyncapi.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        document = await client.get("/asyncapi.json")
        page = await client.get("/asyncapi")
    assert document.status_code == 200
    assert document.json() == json.loads(json.dumps(build_document()))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "koprogo.events.chat.completed.{copro_id}" in page.text
    assert "<code>execution_info</code>" in page.text and 'href="#schema-ExecutionInfo"' in page.text
    # Keyed edge nodes send theirs on their own subjects (nodeChatCompleted): the ledger checks the sender.
    assert "sent by cloud; received by ledger" in page.text
    assert "<script" not in page.text
