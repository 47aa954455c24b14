"""Nodes and services on a NATS server that knows each one's nkey: what each may do, what is refused.

The server is the `secured_nats` fixture: an embedded nats-server with the `authorization`
block `koprogo up` writes (tests/conftest.py). The server reports a refused publish or
subscription to the client as `-ERR 'Permissions Violation ...'` (nats-py hands it to the
error callback, and a refused request gets no answer); each test waits for that report, so
nothing depends on timing beyond a generous timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from koprogo_cli.embedded_nats import EmbeddedNats, nats_server_binary
from koprogo_cli.nats_auth import identities, render_authorization
from koprogo_cli.nats_keys import mint_seed, roster_file
from koprogo_cli.ports import free_port
from koprogo_cloud.adapters.outcomes import NatsOutcomeSink
from koprogo_gateway.adapters.chat_bus import NatsChatBus
from koprogo_gateway.adapters.rate_limit_store import NatsKvCounterStore
from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.adapters.postgres_projection import PostgresProjectionUnitOfWork
from koprogo_ledger.adapters.stream_scrubber import NatsStreamScrubber
from koprogo_ledger.entrypoints.nats_consumer import event_batch_handler
from koprogo_ledger.service_layer.projection import project
from koprogo_node.adapters.inference import FakeInferenceEngine
from koprogo_node.settings import NodeSettings
from koprogo_shared import chat_outcomes, subjects
from koprogo_shared.chat_outcomes import completed_id
from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.consumer import ConsumerSpec
from koprogo_shared.content_crypto import Keyring
from koprogo_shared.decisions import ACK, DeadLetter
from koprogo_shared.durables import consumer_config
from koprogo_shared.events import (
    ChatCompleted,
    ChatFailed,
    ChatMessage,
    ChatRequested,
    ExecutionInfo,
    NodeHeartbeat,
    RunInference,
    Usage,
    utc_now,
)
from koprogo_shared.heartbeats import follow_heartbeats
from koprogo_shared.kv_buckets import RateLimitBucketError, bucket_stream, rate_limit_ttl_s
from koprogo_shared.nats_connection import (
    StreamsMissingError,
    buckets_for_service,
    connect_nats,
    ensure_streams,
    streams_for_service,
    subscribed,
)
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.node_roster import RosterFile
from koprogo_shared.publishing import publish_event
from koprogo_shared.task_events import NodeTrustChanged
from tests.conftest import SECURED_NODES, TEST_CONTENT_KEYS, SecuredNats, wait_until
from tests.integration.cloud_support import work_item as cloud_work_item
from tests.integration.edge_support import listening, routed_edge_request, run_inference, running_node
from tests.integration.ledger_support import chat_requested
from tests.integration.nats_permissions_support import Client, connected_as, request_refused

pytestmark = pytest.mark.integration

MODEL = SECURED_NODES["pi-1"][0]  # the bundled model, which pi-1 serves
OTHER_MODEL = SECURED_NODES["pi-2"][0]  # served by pi-2 only
LEDGER_KEYRING = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"])


async def work_items(js: JetStreamContext) -> int:
    return (await js.stream_info(subjects.WORK_STREAM)).state.messages


async def test_a_node_with_its_own_key_takes_its_models_work_and_publishes_its_answer_and_heartbeat(
    secured: SecuredNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="koprogo_shared.nats_connection")
    settings = NodeSettings(
        nats_url=secured.url,
        nats_nkey_seed_file=secured.seed_files["node:pi-1"],
        node_id="pi-1",
        node_model=MODEL,
        ops_port=0,
        ack_wait_s=5.0,
        heartbeat_interval_s=0.5,
    )
    reply = subjects.gateway_reply("gw-secured")
    async with (
        connected_as(secured, "admin") as admin,
        connected_as(secured, "router") as router,
        listening(admin.nc, subjects.node_reply(reply, "pi-1"), "outcome") as replies,
        listening(admin.nc, subjects.node_heartbeat("pi-1"), "heartbeat") as beats,
        running_node(settings, engine=FakeInferenceEngine()),
    ):
        beat = await beats.next(30)
        cmd = run_inference("Bonjour", reply_subject=reply, max_tokens=16)
        await publish_event(router.js, subjects.run_inference_edge(MODEL), cmd)
        outcome = await replies.next(30)
        stored = await admin.js.get_last_msg(
            subjects.EVENTS_STREAM, subjects.node_chat_completed("copro-edge", "pi-1")
        )
        await wait_until(lambda: _none_left(admin.js), timeout=10)  # acked: gone from the work queue

        # Poison: the node may dead-letter its own model's work, and only that.
        await router.js.publish(subjects.run_inference_edge(MODEL), b"not a command", timeout=2)
        dead_subject = subjects.deadletter_for(subjects.run_inference_edge(MODEL))

        async def dead_lettered() -> bool:
            try:
                await admin.js.get_last_msg(subjects.DEADLETTER_STREAM, dead_subject)
            except NotFoundError:
                return False
            return True

        await wait_until(dead_lettered, timeout=10)
        await wait_until(lambda: _none_left(admin.js), timeout=10)
    assert beat.node_id == "pi-1" and beat.models == [MODEL]
    assert isinstance(outcome, ChatCompleted) and outcome.request_id == cmd.request_id
    assert outcome.execution_info.node_id == "pi-1"
    assert ChatCompleted.model_validate_json(stored.data or b"") == outcome
    assert "permissions violation" not in caplog.text.lower()
    assert "authorization violation" not in caplog.text.lower()


async def _none_left(js: JetStreamContext) -> bool:
    return await work_items(js) == 0


async def _fetch_once(client: Client, model: str, pool: str = subjects.SHARED_POOL) -> None:
    sub = await client.js.pull_subscribe_bind(
        durable=subjects.edge_work_durable(model, pool), stream=subjects.WORK_STREAM
    )
    with contextlib.suppress(nats.errors.TimeoutError):
        await sub.fetch(1, timeout=1)


def _consumer(
    name: str | None, durable: str, model: str, pool: str = subjects.SHARED_POOL
) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        name=name,
        durable_name=durable,
        filter_subject=subjects.run_inference_edge(model, pool),
        ack_policy=js_api.AckPolicy.EXPLICIT,
    )


async def _alter_work_stream(client: Client) -> None:
    config = js_api.StreamConfig(name=subjects.WORK_STREAM, subjects=[subjects.WORK_ALL], max_age=1.0)
    await request_refused(client.js.update_stream(config))


async def _subscribe(client: Client, subject: str) -> None:
    await client.nc.subscribe(subject)
    await client.nc.flush()


Action = Callable[[Client], Awaitable[object]]
MY_DURABLE = subjects.edge_work_durable(MODEL)
OTHER_DURABLE = subjects.edge_work_durable(OTHER_MODEL)

# What pi-1 (serving MODEL) tries, and the subject the server names in refusing it.
REFUSED_TO_A_NODE: dict[str, tuple[Action, str]] = {
    "fetch another model's work": (
        lambda c: _fetch_once(c, OTHER_MODEL),
        f'publish to "$JS.API.CONSUMER.MSG.NEXT.{subjects.WORK_STREAM}.{OTHER_DURABLE}"',
    ),
    "look up another model's consumer": (
        lambda c: request_refused(c.js.consumer_info(subjects.WORK_STREAM, OTHER_DURABLE)),
        f"$JS.API.CONSUMER.INFO.{subjects.WORK_STREAM}.{OTHER_DURABLE}",
    ),
    "point its own durable at another model's work": (
        lambda c: request_refused(
            c.js.add_consumer(subjects.WORK_STREAM, _consumer(MY_DURABLE, MY_DURABLE, OTHER_MODEL))
        ),
        f"$JS.API.CONSUMER.CREATE.{subjects.WORK_STREAM}.{MY_DURABLE}.{subjects.run_inference_edge(OTHER_MODEL)}",
    ),
    "create a durable without naming its filter": (
        lambda c: request_refused(
            c.js.add_consumer(subjects.WORK_STREAM, _consumer(None, MY_DURABLE, OTHER_MODEL))
        ),
        f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.WORK_STREAM}.{MY_DURABLE}",
    ),
    "publish another node's heartbeat": (
        lambda c: c.nc.publish(subjects.node_heartbeat("pi-2"), b"{}"),
        f'publish to "{subjects.node_heartbeat("pi-2")}"',
    ),
    "publish work": (
        lambda c: c.nc.publish(subjects.run_inference_edge(OTHER_MODEL), b"{}"),
        f'publish to "{subjects.run_inference_edge(OTHER_MODEL)}"',
    ),
    "publish a chat request": (
        lambda c: c.nc.publish(subjects.chat_requested("copro-x"), b"{}"),
        f'publish to "{subjects.chat_requested("copro-x")}"',
    ),
    "delete the work stream": (
        lambda c: request_refused(c.js.delete_stream(subjects.WORK_STREAM)),
        f"$JS.API.STREAM.DELETE.{subjects.WORK_STREAM}",
    ),
    "purge the work stream": (
        lambda c: request_refused(c.js.purge_stream(subjects.WORK_STREAM)),
        f"$JS.API.STREAM.PURGE.{subjects.WORK_STREAM}",
    ),
    "alter the work stream": (_alter_work_stream, f"$JS.API.STREAM.UPDATE.{subjects.WORK_STREAM}"),
    "create a stream over the work": (
        lambda c: request_refused(c.js.add_stream(name="STOLEN", subjects=["koprogo.work.edge.>"])),
        "$JS.API.STREAM.CREATE.STOLEN",
    ),
    "listen to work as it is published": (
        lambda c: _subscribe(c, subjects.WORK_ALL),
        f'subscription to "{subjects.WORK_ALL}"',
    ),
    "listen to the event log": (
        lambda c: _subscribe(c, subjects.EVENTS_ALL),
        f'subscription to "{subjects.EVENTS_ALL}"',
    ),
    "read the gateways' answers": (
        lambda c: _subscribe(c, subjects.gateway_reply("gw-1")),
        f'subscription to "{subjects.gateway_reply("gw-1")}"',
    ),
    "read other clients' inboxes": (lambda c: _subscribe(c, "_INBOX.>"), 'subscription to "_INBOX.>"'),
    "answer on a gateway's own subject": (
        lambda c: c.nc.publish(subjects.gateway_reply("gw-1"), b"{}"),
        f'publish to "{subjects.gateway_reply("gw-1")}"',
    ),
    "hear every request's cancel": (
        lambda c: _subscribe(c, subjects.CHAT_CANCEL_ALL),
        f'subscription to "{subjects.CHAT_CANCEL_ALL}"',
    ),
}


@pytest.mark.parametrize("attempt", list(REFUSED_TO_A_NODE))
async def test_a_node_is_refused_by_the_server_beyond_its_own_work_and_results(
    secured: SecuredNats, attempt: str
) -> None:
    action, refused_subject = REFUSED_TO_A_NODE[attempt]
    async with (
        connected_as(secured, "admin") as admin,
        connected_as(secured, "router") as router,
        listening(admin.nc, subjects.NODE_HEARTBEAT_ALL, "heartbeat") as beats,
    ):
        other_work = run_inference("Pour pi-2 seulement", reply_subject=subjects.gateway_reply("gw-1"))
        other_work = other_work.model_copy(update={"model": OTHER_MODEL})
        await publish_event(router.js, subjects.run_inference_edge(OTHER_MODEL), other_work)
        async with connected_as(secured, "node:pi-1") as node:
            await action(node)
            refusal = await node.refusals.next()
            assert node.nc.is_connected  # refused, not disconnected
        await admin.nc.flush()
        work = await admin.js.stream_info(subjects.WORK_STREAM)
    assert "permissions violation" in refusal and refused_subject.lower() in refusal, refusal
    # Nothing happened: the other model's item waits for its node, the stream is as declared.
    assert work.state.messages == 1 and work.config.max_age == 86400
    assert beats.items.empty()
    with pytest.raises(NotFoundError):
        async with connected_as(secured, "admin") as admin:
            await admin.js.stream_info("STOLEN")


@pytest.mark.parametrize("credentials", ["an unknown key", "no key"])
async def test_a_client_without_a_known_key_cannot_connect(
    secured_nats: SecuredNats, tmp_path: Path, credentials: str
) -> None:
    options: dict[str, str] = {}
    if credentials == "an unknown key":
        seed_file = tmp_path / "stranger.nk"
        mint_seed(seed_file)
        options = {"nkeys_seed": str(seed_file)}
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await nats.connect(secured_nats.url, allow_reconnect=False, connect_timeout=5, **options)  # type: ignore[arg-type]


async def test_a_service_with_an_unknown_key_keeps_being_refused_and_says_so(
    secured_nats: SecuredNats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="koprogo_shared.nats_connection")
    seed_file = tmp_path / "stranger.nk"
    mint_seed(seed_file)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connect_nats(secured_nats.url, "stranger", nkey_seed_file=seed_file), 2)
    assert "authorization violation" in caplog.text.lower()


async def test_the_ledger_and_the_router_look_the_streams_up_but_may_neither_update_nor_delete_them(
    secured: SecuredNats,
) -> None:
    # Shrinking max_age (or max_bytes) purges what is older at once: only the operator may.
    events = next(spec for spec in subjects.STREAMS if spec.name == subjects.EVENTS_STREAM)
    shrunk = js_api.StreamConfig(
        name=events.name, subjects=events.subjects, max_age=1.0, storage=js_api.StorageType.FILE
    )
    for identity in ("ledger", "router"):
        async with connected_as(secured, identity) as service:
            await service.js.stream_info(subjects.EVENTS_STREAM)  # looking up is theirs
            await request_refused(service.js.update_stream(shrunk))
            updating = await service.refusals.next()
            await request_refused(service.js.add_stream(shrunk))
            creating = await service.refusals.next()
            await request_refused(service.js.delete_stream(subjects.EVENTS_STREAM))
            deleting = await service.refusals.next()
        assert f"$JS.API.STREAM.UPDATE.{subjects.EVENTS_STREAM}".lower() in updating, (identity, updating)
        assert f"$JS.API.STREAM.CREATE.{subjects.EVENTS_STREAM}".lower() in creating, (identity, creating)
        assert f"$JS.API.STREAM.DELETE.{subjects.EVENTS_STREAM}".lower() in deleting, (identity, deleting)
    async with connected_as(secured, "admin") as admin:
        kept = (await admin.js.stream_info(subjects.EVENTS_STREAM)).config.max_age
    assert kept == events.max_age_s


async def test_the_ledger_and_the_router_wait_for_the_streams_the_operator_declares(
    secured: SecuredNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="koprogo_shared.nats_connection")
    async with connected_as(secured, "admin") as admin:
        await admin.js.delete_stream(subjects.WORK_STREAM)
    async with connected_as(secured, "router") as router:
        with pytest.raises(StreamsMissingError, match=rf"{subjects.WORK_STREAM} still missing after 1s"):
            await streams_for_service(router.js, secured.seed_files["router"], timeout_s=1.0)
        assert f"waiting for stream {subjects.WORK_STREAM}" in caplog.text
        assert router.refusals.errors.empty()  # it only looked
        async with connected_as(secured, "ledger") as ledger:
            waiting = asyncio.ensure_future(
                streams_for_service(ledger.js, secured.seed_files["ledger"], timeout_s=30.0)
            )
            await asyncio.sleep(0.5)
            assert not waiting.done()
            # The deployments' setup step (a k8s Job, a compose one-shot service), as the operator.
            setup = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "koprogo_shared.nats_connection",
                env={**os.environ, "NATS_URL": secured.url, "NATS_NKEY_SEED_FILE": str(secured.seed_files["admin"])},
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(setup.communicate(), 60)
            assert setup.returncode == 0, err.decode()
            await asyncio.wait_for(waiting, 10)
            assert ledger.refusals.errors.empty()
    assert f"declared streams {subjects.EVENTS_STREAM}" in err.decode()


async def test_the_gateway_publishes_requests_and_keeps_its_counters_but_cannot_touch_streams_or_work(
    secured: SecuredNats,
) -> None:
    async with connected_as(secured, "gateway") as gateway:
        await buckets_for_service(
            gateway.js, secured.seed_files["gateway"], rate_limit_window_s=60, timeout_s=5
        )
        counters = NatsKvCounterStore(await gateway.js.key_value(subjects.RATE_LIMIT_BUCKET))
        first = await counters.create("user-1", 1)
        await counters.replace("user-1", 2, first.revision)
        counted = await counters.read("user-1")
        ack = await gateway.js.publish(
            subjects.chat_requested("copro-a"), b"{}", headers={"Nats-Msg-Id": "gw-test-1"}, timeout=2
        )
        await gateway.nc.subscribe(subjects.gateway_reply("gw-1"))
        await gateway.nc.subscribe(subjects.NODE_HEARTBEAT_ALL)
        await gateway.nc.publish(subjects.NODES_ANNOUNCE, b"")
        await subscribed(gateway.nc)  # a refused SUB's -ERR comes before the second PONG
        assert gateway.refusals.errors.empty()

        await gateway.nc.publish(subjects.run_inference_edge(MODEL), b"{}")
        work_refusal = await gateway.refusals.next()
        await request_refused(gateway.js.add_stream(name=subjects.EVENTS_STREAM, subjects=["koprogo.>"]))
        stream_refusal = await gateway.refusals.next()
    assert counted is not None and counted.count == 2
    assert ack.stream == subjects.EVENTS_STREAM
    assert f'publish to "{subjects.run_inference_edge(MODEL)}"' in work_refusal
    assert f"$JS.API.STREAM.CREATE.{subjects.EVENTS_STREAM}".lower() in stream_refusal


async def test_the_gateway_and_the_router_may_neither_shrink_nor_redeclare_the_buckets(
    secured: SecuredNats,
) -> None:
    # Shrinking the counters' max_age forgives every user's window; an emptied policies'
    # bucket drops every copro's edge_only. Only the setup step (admin) declares them.
    async with connected_as(secured, "admin") as admin:
        counters_config = (await admin.js.stream_info(bucket_stream(subjects.RATE_LIMIT_BUCKET))).config
    counters_config.max_age = 1.0
    refused: dict[str, list[str]] = {}
    for identity in ("gateway", "router"):
        async with connected_as(secured, identity) as service:
            await buckets_for_service(
                service.js,
                secured.seed_files[identity],
                rate_limit_window_s=60 if identity == "gateway" else None,
                timeout_s=5,
            )
            assert service.refusals.errors.empty()  # waiting for them is only looking
            found = []
            await request_refused(service.js.update_stream(counters_config))
            found.append(await service.refusals.next())
            await request_refused(service.js.delete_key_value(subjects.ROUTING_POLICY_BUCKET))
            found.append(await service.refusals.next())
            await request_refused(service.js.create_key_value(bucket="KOPROGO_STOLEN"))
            found.append(await service.refusals.next())
            refused[identity] = found
    async with connected_as(secured, "admin") as admin:
        kept = (await admin.js.stream_info(bucket_stream(subjects.RATE_LIMIT_BUCKET))).config.max_age
    assert kept == rate_limit_ttl_s(60)
    for identity, found in refused.items():
        assert f"$JS.API.STREAM.UPDATE.{bucket_stream(subjects.RATE_LIMIT_BUCKET)}".lower() in found[0], (
            identity
        )
        assert f"$JS.API.STREAM.DELETE.{bucket_stream(subjects.ROUTING_POLICY_BUCKET)}".lower() in found[1]
        assert "$JS.API.STREAM.CREATE.KV_KOPROGO_STOLEN".lower() in found[2], (identity, found[2])


async def test_a_gateway_whose_window_outlives_the_declared_counters_refuses_to_start(
    secured: SecuredNats,
) -> None:
    async with connected_as(secured, "gateway") as gateway:
        with pytest.raises(
            RateLimitBucketError, match=r"keeps counters 120 s, but a 300 s window needs 600 s"
        ):
            await buckets_for_service(
                gateway.js, secured.seed_files["gateway"], rate_limit_window_s=300, timeout_s=5
            )
        assert gateway.refusals.errors.empty()


def test_the_shipped_server_config_with_its_written_authorization_block_is_valid(tmp_path: Path) -> None:
    shipped = Path(__file__).parents[2] / "deploy" / "nats" / "nats-server.conf"
    (tmp_path / "nats-server.conf").write_text(shipped.read_text())
    written = subprocess.run(
        [
            sys.executable,
            "-m",
            "koprogo_cli.main",
            "nats-config",
            "--keys-dir",
            str(tmp_path / "keys"),
            "--out",
            str(tmp_path / "authorization.conf"),
            "--node",
            f"pi-1={MODEL}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert written.returncode == 0, written.stderr
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "nats-server.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0 and "is valid" in checked.stdout + checked.stderr, checked.stderr
    assert "sync_interval: always" in shipped.read_text()
    assert f"node:pi-1: NATS_NKEY_SEED_FILE={tmp_path / 'keys' / 'nodes' / 'pi-1.nk'}" in written.stderr


async def test_the_ledger_may_delete_a_users_messages_from_the_audit_log_and_the_router_may_not(
    secured: SecuredNats,
) -> None:
    request = ChatRequested(
        source="tests",
        copro_id="copro-a",
        model=MODEL,
        messages=[ChatMessage(role="user", content="Mon numéro de lot est le 12.")],
        user_id=str(uuid.uuid4()),
        reply_subject="koprogo.reply.tests",
        deadline=utc_now() + timedelta(seconds=30),
    )
    async with connected_as(secured, "gateway") as gateway:
        ack = await gateway.js.publish(subjects.chat_requested("copro-a"), request.model_dump_json().encode())

    class RequestsOfTheUser:
        async def fetch(self, _query: str, *_args: object) -> list[dict[str, uuid.UUID]]:
            return [{"id": uuid.UUID(request.id)}]

    async with connected_as(secured, "router") as router:
        await request_refused(router.js.delete_msg(subjects.EVENTS_STREAM, ack.seq))
    async with connected_as(secured, "ledger") as ledger:
        scrubber = NatsStreamScrubber(ledger.js, RequestsOfTheUser())  # type: ignore[arg-type]
        assert await scrubber.erase_user(uuid.UUID(int=1), before=ack.seq + 1) == 1
        assert ledger.refusals.errors.empty()
    async with connected_as(secured, "admin") as admin:
        with pytest.raises(NotFoundError):
            await admin.js.get_msg(subjects.EVENTS_STREAM, ack.seq)


async def test_the_cloud_worker_finds_a_stored_answer_with_its_own_key_and_may_not_touch_consumers(
    secured: SecuredNats,
) -> None:
    def answer_to(work: RunInference, content: str) -> ChatCompleted:
        return chat_outcomes.completed(
            work,
            source="koprogo/cloud/openai-main",
            content=content,
            finish_reason="stop",
            tool_calls=None,
            prompt_tokens=3,
            completion_tokens=2,
            execution_type="cloud",
            node_id="openai-main",
            seconds=0.01,
            co2_grams=0.001,
        )

    works = [
        cloud_work_item("openai-main", "gpt-4o-mini", reply_subject="koprogo.reply.tests") for _ in range(4)
    ]
    target = works[2]
    async with connected_as(secured, "cloud") as cloud:
        for work in works:  # the copro's cloud answers, the one looked for among them
            await publish_event(
                cloud.js, subjects.cloud_chat_completed(work.copro_id), answer_to(work, work.id)
            )
        found = await NatsOutcomeSink(cloud.nc, cloud.js).stored_answer(target)
        missing = await NatsOutcomeSink(cloud.nc, cloud.js).stored_answer(
            cloud_work_item("openai-main", "gpt-4o-mini", reply_subject="koprogo.reply.tests")
        )
        assert cloud.refusals.errors.empty(), "the look-up needs nothing but its message gets"
        # A consumer grant on the audit log would let it rewrite the ledger's durable: a create
        # naming it (on the subject that carries the name and filter), or an unnamed one.
        rewrite = js_api.ConsumerConfig(
            name=subjects.LEDGER_DURABLE,
            durable_name=subjects.LEDGER_DURABLE,
            filter_subject="koprogo.events.nothing",
        )
        await request_refused(cloud.js.add_consumer(subjects.EVENTS_STREAM, rewrite))
        named = await cloud.refusals.next()
        unnamed = js_api.ConsumerConfig(filter_subject=subjects.cloud_chat_completed(target.copro_id))
        await request_refused(cloud.js.add_consumer(subjects.EVENTS_STREAM, unnamed))
        ordered = await cloud.refusals.next()
    assert found is not None and found.id == completed_id(target) and found.content == target.id
    assert missing is None
    ledgers = (
        f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}.{subjects.LEDGER_DURABLE}.koprogo.events.nothing"
    )
    assert f'publish to "{ledgers}"'.lower() in named.lower(), named
    assert f'publish to "$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}"'.lower() in ordered.lower(), (
        ordered
    )


async def test_the_cloud_worker_hears_the_gateways_cancel_and_cannot_cancel_itself(
    secured: SecuredNats,
) -> None:
    request_id = "7b3c1a2e-9c1d-4e0b-8f7a-5d2c1b0a9e8f"
    async with connected_as(secured, "cloud") as cloud, connected_as(secured, "gateway") as gateway:
        heard: asyncio.Queue[str] = asyncio.Queue()

        async def on_cancel(msg: Any) -> None:
            await heard.put(msg.subject)

        await cloud.nc.subscribe(subjects.chat_cancel(request_id), cb=on_cancel)
        await subscribed(cloud.nc)
        await gateway.nc.publish(subjects.chat_cancel(request_id), b"")
        assert await asyncio.wait_for(heard.get(), 5) == subjects.chat_cancel(request_id)
        assert cloud.refusals.errors.empty()

        await cloud.nc.publish(subjects.chat_cancel(request_id), b"")
        refusal = await cloud.refusals.next()
    assert f'publish to "{subjects.chat_cancel(request_id)}"' in refusal


def _heartbeat(
    node_id: str, model: str, *, leaving: bool = False, footprint: EdgeFootprint | None = None
) -> bytes:
    footprint = footprint or EdgeFootprint()
    beat = NodeHeartbeat(
        source="tests",
        node_id=node_id,
        models=[model],
        in_flight=0,
        capacity=1,
        tokens_per_second=10.0,
        power_watts=footprint.power_watts,
        intensity_g_per_kwh=footprint.intensity_g_per_kwh,
        renewable_attested=footprint.renewable_attested,
        interval_s=30.0,
        leaving=leaving,
    )
    return beat.model_dump_json().encode()


def _serving(registry: NodeRegistry, model: str) -> list[str]:
    return [c.node_id for c in registry.serving(model, time.monotonic())]


def _heartbeats_refused(reason: str) -> float:
    return REGISTRY.get_sample_value("koprogo_heartbeats_refused_total", {"reason": reason}) or 0.0


async def test_a_node_cannot_say_that_another_node_leaves_nor_speak_for_it(secured: SecuredNats) -> None:
    registry = NodeRegistry()
    refused = _heartbeats_refused("node_id_not_its_subject")
    async with (
        connected_as(secured, "router") as router,
        connected_as(secured, "node:pi-1") as pi_1,
        connected_as(secured, "node:pi-2") as pi_2,
    ):
        await follow_heartbeats(router.nc, registry)
        await pi_1.nc.publish(subjects.node_heartbeat("pi-1"), _heartbeat("pi-1", MODEL))
        await wait_until(lambda: _serving(registry, MODEL) == ["pi-1"], timeout=5)
        # On the one heartbeat subject its key may use, pi-2 says pi-1 leaves, then speaks as pi-1.
        await pi_2.nc.publish(subjects.node_heartbeat("pi-2"), _heartbeat("pi-1", MODEL, leaving=True))
        await pi_2.nc.publish(subjects.node_heartbeat("pi-2"), _heartbeat("pi-1", OTHER_MODEL))
        await pi_2.nc.publish(subjects.node_heartbeat("pi-2"), _heartbeat("pi-2", OTHER_MODEL))
        await wait_until(lambda: _serving(registry, OTHER_MODEL) == ["pi-2"], timeout=5)
        assert pi_2.refusals.errors.empty()
    assert _serving(registry, MODEL) == ["pi-1"]
    assert _heartbeats_refused("node_id_not_its_subject") - refused == 2


async def test_a_node_cannot_announce_a_model_its_key_was_not_minted_for(secured: SecuredNats) -> None:
    registry = NodeRegistry(RosterFile(roster_file(secured.keys_dir)))
    refused = _heartbeats_refused("model_not_granted")
    async with connected_as(secured, "router") as router, connected_as(secured, "node:pi-2") as pi_2:
        await follow_heartbeats(router.nc, registry)
        await pi_2.nc.publish(subjects.node_heartbeat("pi-2"), _heartbeat("pi-2", MODEL))  # pi-1's model
        await pi_2.nc.publish(subjects.node_heartbeat("pi-2"), _heartbeat("pi-2", OTHER_MODEL))
        await wait_until(lambda: _serving(registry, OTHER_MODEL) == ["pi-2"], timeout=5)
    assert _serving(registry, MODEL) == []
    assert _heartbeats_refused("model_not_granted") - refused == 1


async def test_a_node_cannot_claim_a_cleaner_energy_than_its_operator_declared(secured: SecuredNats) -> None:
    # pi-2's key was minted with the default footprint (7 W on a 150 g/kWh grid, no renewable).
    registry = NodeRegistry(RosterFile(roster_file(secured.keys_dir)))
    refused = _heartbeats_refused("footprint_not_declared")
    zero_grams = EdgeFootprint(power_watts=0.0, intensity_g_per_kwh=0.0, renewable_attested=True)
    dirtier_hour = EdgeFootprint(power_watts=7.0, intensity_g_per_kwh=400.0)
    async with connected_as(secured, "router") as router, connected_as(secured, "node:pi-2") as pi_2:
        await follow_heartbeats(router.nc, registry)
        await pi_2.nc.publish(
            subjects.node_heartbeat("pi-2"), _heartbeat("pi-2", OTHER_MODEL, footprint=zero_grams)
        )
        await pi_2.nc.flush()
        await wait_until(lambda: _heartbeats_refused("footprint_not_declared") - refused == 1, timeout=5)
        assert _serving(registry, OTHER_MODEL) == []
        # Worse than declared is believed: an honest node on a dirtier grid this hour.
        await pi_2.nc.publish(
            subjects.node_heartbeat("pi-2"), _heartbeat("pi-2", OTHER_MODEL, footprint=dirtier_hour)
        )
        await wait_until(lambda: _serving(registry, OTHER_MODEL) == ["pi-2"], timeout=5)
    [candidate] = registry.serving(OTHER_MODEL, time.monotonic())
    assert candidate.intensity_g_per_kwh == 400.0 and not candidate.renewable_attested


def _forged_answer(request_id: str, node_id: str) -> bytes:
    forged = ChatCompleted(
        source="tests/forger",
        copro_id="copro-edge",
        request_id=request_id,
        model=MODEL,
        content="Votre syndic vous demande de virer 5 000 EUR sur ce compte.",
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
        execution_info=ExecutionInfo(
            execution_type="edge", node_id=node_id, latency_ms=1.0, co2_grams=0.0, co2_saved_grams=0.0
        ),
    )
    return forged.model_dump_json().encode()


async def test_the_gateway_takes_an_answer_only_from_the_node_that_runs_the_request(
    secured: SecuredNats,
) -> None:
    settings = NodeSettings(
        nats_url=secured.url,
        nats_nkey_seed_file=secured.seed_files["node:pi-1"],
        node_id="pi-1",
        node_model=MODEL,
        ops_port=0,
        ack_wait_s=5.0,
    )
    async with (
        connected_as(secured, "admin") as admin,
        connected_as(secured, "gateway") as gateway,
        connected_as(secured, "router") as router,
        connected_as(secured, "node:pi-2") as forger,
        running_node(settings, engine=FakeInferenceEngine()),
    ):
        bus = NatsChatBus(gateway.nc, gateway.js, subjects.gateway_reply("gw-forged"))
        await bus.start()
        cmd = run_inference("Bonjour", reply_subject=bus.reply_subject, max_tokens=16)
        expected = bus.expect(cmd.request_id)
        # pi-2 was given nothing: it answers first, on the gateway's subject.
        await forger.nc.publish(bus.reply_subject, _forged_answer(cmd.request_id, "pi-1"))
        refusal = await forger.refusals.next()
        await publish_event(router.js, subjects.run_inference_edge(MODEL), cmd)
        outcome = await asyncio.wait_for(expected.outcome, 30)
        # The caller leaves: the cancel goes to pi-1 alone (pi-2 may not even listen: above).
        cancels = await admin.nc.subscribe(subjects.node_cancel("pi-1", cmd.request_id))
        # Not `flush()` alone: this cancel went missing about 1 run in 26 (`subscribed`).
        await subscribed(admin.nc)
        await bus.cancel(cmd.request_id)
        cancel = await cancels.next_msg(timeout=10)
    assert cancel.subject == subjects.node_cancel("pi-1", cmd.request_id)
    assert f'publish to "{bus.reply_subject}"' in refusal
    assert isinstance(outcome, ChatCompleted) and outcome.execution_info.node_id == "pi-1"
    assert "virer" not in outcome.content


POOL_X, POOL_Y = subjects.copro_pool("copro-x"), subjects.copro_pool("copro-y")


@pytest.fixture(scope="module")
def copro_pools_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNats]:
    """A secured server whose nodes serve the same model: pi-x for copro-x, pi-y for copro-y, pi-xy
    for both, pi-s shared."""
    keys_dir = tmp_path_factory.mktemp("nats-keys-pools")
    found = identities(
        keys_dir,
        {"pi-x": [MODEL], "pi-y": [MODEL], "pi-s": [MODEL], "pi-xy": [MODEL]},
        node_copros={"pi-x": ["copro-x"], "pi-y": ["copro-y"], "pi-xy": ["copro-x", "copro-y"]},
    )
    server = EmbeddedNats(
        tmp_path_factory.mktemp("nats-pools"),
        port=free_port(),
        monitor_port=free_port(),
        authorization=render_authorization(found.users),
    ).start()
    try:
        yield SecuredNats(server.url, found.seed_files, keys_dir)
    finally:
        server.stop()


async def _take_one(client: Client, pool: str) -> RunInference:
    durable = subjects.edge_work_durable(MODEL, pool)
    config = js_api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=subjects.run_inference_edge(MODEL, pool),
        ack_policy=js_api.AckPolicy.EXPLICIT,
    )
    await client.js.add_consumer(subjects.WORK_STREAM, config)
    sub = await client.js.pull_subscribe_bind(durable=durable, stream=subjects.WORK_STREAM)
    [msg] = await sub.fetch(1, timeout=5)
    await msg.ack()
    return RunInference.model_validate_json(msg.data)


async def test_a_copros_work_is_taken_by_its_own_node_and_no_other_copros_or_shared_node(
    copro_pools_nats: SecuredNats,
) -> None:
    server = copro_pools_nats
    async with connected_as(server, "admin") as admin, connected_as(server, "router") as router:
        await ensure_streams(admin.js)
        work = run_inference(
            "Le PV de l'AG de la copro Y", reply_subject="koprogo.reply.gw-1", copro_id="copro-y"
        )
        await publish_event(router.js, subjects.run_inference_edge(MODEL, POOL_Y), work)
    refusals = []
    for intruder in ("node:pi-x", "node:pi-s"):
        async with connected_as(server, intruder) as node:
            await _fetch_once(node, MODEL, POOL_Y)
            refusals.append(await node.refusals.next())
            # Nor its own durable pointed at copro-y's work.
            own_pool = POOL_X if intruder == "node:pi-x" else subjects.SHARED_POOL
            mine = subjects.edge_work_durable(MODEL, own_pool)
            await request_refused(
                node.js.add_consumer(subjects.WORK_STREAM, _consumer(mine, mine, MODEL, POOL_Y))
            )
            refusals.append(await node.refusals.next())
    async with connected_as(server, "node:pi-y") as pi_y:
        taken = await _take_one(pi_y, POOL_Y)
        assert pi_y.refusals.errors.empty()
    assert all("permissions violation" in r for r in refusals), refusals
    assert (
        f"$JS.API.CONSUMER.MSG.NEXT.{subjects.WORK_STREAM}.{subjects.edge_work_durable(MODEL, POOL_Y)}".lower()
        in refusals[0]
    )
    assert taken.request_id == work.request_id and "copro Y" in taken.messages[0].content


async def test_a_node_of_a_copros_pool_serves_that_copros_work_and_announces_its_pool(
    copro_pools_nats: SecuredNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="koprogo_shared.nats_connection")
    server = copro_pools_nats
    settings = NodeSettings(
        nats_url=server.url,
        nats_nkey_seed_file=server.seed_files["node:pi-x"],
        node_id="pi-x",
        node_model=MODEL,
        node_copros=["copro-x"],
        ops_port=0,
        ack_wait_s=5.0,
        heartbeat_interval_s=0.5,
    )
    reply = subjects.gateway_reply("gw-pools")
    async with connected_as(server, "admin") as admin, connected_as(server, "router") as router:
        await ensure_streams(admin.js)
        async with (
            listening(admin.nc, subjects.node_reply(reply, "pi-x"), "outcome") as replies,
            listening(admin.nc, subjects.node_heartbeat("pi-x"), "heartbeat") as beats,
            running_node(settings, engine=FakeInferenceEngine()),
        ):
            beat = await beats.next(30)
            cmd = run_inference("Bonjour", reply_subject=reply, max_tokens=16, copro_id="copro-x")
            await publish_event(router.js, subjects.run_inference_edge(MODEL, POOL_X), cmd)
            outcome = await replies.next(30)
    assert beat.pools == [POOL_X]
    assert isinstance(outcome, ChatCompleted) and outcome.request_id == cmd.request_id
    assert "permissions violation" not in caplog.text.lower()


async def test_a_node_of_two_copros_takes_the_work_of_both_one_item_at_a_time(
    copro_pools_nats: SecuredNats,
) -> None:
    server = copro_pools_nats
    settings = NodeSettings(
        nats_url=server.url,
        nats_nkey_seed_file=server.seed_files["node:pi-xy"],
        node_id="pi-xy",
        node_model=MODEL,
        node_copros=["copro-x", "copro-y"],
        ops_port=0,
        ack_wait_s=5.0,
    )
    reply = subjects.gateway_reply("gw-two-pools")
    async with connected_as(server, "admin") as admin, connected_as(server, "router") as router:
        await ensure_streams(admin.js)
        async with (
            listening(admin.nc, subjects.node_reply(reply, "pi-xy"), "outcome") as replies,
            running_node(settings, engine=FakeInferenceEngine()),
        ):
            sent = {}
            for copro, pool in (("copro-x", POOL_X), ("copro-y", POOL_Y)):
                cmd = run_inference(f"Bonjour de {copro}", reply_subject=reply, max_tokens=16, copro_id=copro)
                await publish_event(router.js, subjects.run_inference_edge(MODEL, pool), cmd)
                sent[cmd.request_id] = copro
            outcomes = [await replies.next(30), await replies.next(30)]
    assert {o.request_id: o.copro_id for o in outcomes} == sent
    assert all(isinstance(o, ChatCompleted) and o.execution_info.node_id == "pi-xy" for o in outcomes)


def _routed_consumer(durable: str, filter_subject: str) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=filter_subject,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.NEW,
    )


async def test_a_copros_node_takes_the_requests_routed_to_its_pool_and_no_other_node_may(
    copro_pools_nats: SecuredNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = copro_pools_nats
    settings = NodeSettings(
        nats_url=server.url,
        nats_nkey_seed_file=server.seed_files["node:pi-x"],
        node_id="pi-x",
        node_model=MODEL,
        node_copros=["copro-x"],
        ops_port=0,
        ack_wait_s=5.0,
        heartbeat_interval_s=0.5,
    )
    reply = subjects.gateway_reply("gw-routed-pools")
    async with connected_as(server, "admin") as admin, connected_as(server, "gateway") as gateway:
        await ensure_streams(admin.js)
        async with (
            listening(admin.nc, subjects.node_reply(reply, "pi-x"), "outcome") as replies,
            listening(admin.nc, subjects.node_heartbeat("pi-x"), "heartbeat") as beats,
            running_node(settings, engine=FakeInferenceEngine()),
        ):
            beat = await beats.next(30)
            request = routed_edge_request(
                "Quand a lieu la prochaine AG ?", reply, copro="copro-x", pool=POOL_X, max_tokens=16
            )
            subject = subjects.routed_edge_chat_requested("copro-x", POOL_X, MODEL)
            await gateway.js.publish(
                subject, request.model_dump_json().encode(), headers={"Nats-Msg-Id": request.id}
            )
            outcome = await replies.next(30)
    while_serving = caplog.text.lower()
    async with connected_as(server, "node:pi-y") as pi_y:
        mine = subjects.routed_edge_requests_durable(MODEL, POOL_Y)
        theirs = subjects.routed_edge_requests_durable(MODEL, POOL_X)
        # Neither its own durable pointed at copro-x's pool, nor pi-x's, nor the whole audit log.
        for durable, filter_subject in (
            (mine, subjects.routed_edge_requests_filter(MODEL, POOL_X)),
            (theirs, subjects.routed_edge_requests_filter(MODEL, POOL_X)),
            (mine, subjects.CHAT_REQUESTED_ALL),
        ):
            await request_refused(
                pi_y.js.add_consumer(subjects.EVENTS_STREAM, _routed_consumer(durable, filter_subject))
            )
            assert "permissions violation" in await pi_y.refusals.next()
        # Its own, with exactly its filter, it may.
        await pi_y.js.add_consumer(
            subjects.EVENTS_STREAM,
            _routed_consumer(mine, subjects.routed_edge_requests_filter(MODEL, POOL_Y)),
        )
        assert pi_y.refusals.errors.empty()
    assert beat.pools == [POOL_X] and beat.takes_routed_requests is True
    assert isinstance(outcome, ChatCompleted) and outcome.request_id == request.id
    assert outcome.copro_id == "copro-x" and outcome.execution_info.node_id == "pi-x"
    assert "permissions violation" not in while_serving


async def test_a_node_whose_hub_predates_routed_requests_says_so_and_takes_the_routers_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The hub's grants for the node written by an earlier release: no durable on the audit log.
    keys_dir = tmp_path / "keys"
    found = identities(keys_dir, {"pi-old": [MODEL]})
    users = [
        user
        if not user.label.startswith("edge node ") or user.permissions is None
        else dataclasses.replace(
            user,
            permissions=dataclasses.replace(
                user.permissions,
                publish=tuple(p for p in user.permissions.publish if subjects.EVENTS_STREAM not in p),
            ),
        )
        for user in found.users
    ]
    server = EmbeddedNats(
        tmp_path / "nats",
        port=free_port(),
        monitor_port=free_port(),
        authorization=render_authorization(users),
    ).start()
    try:
        secured = SecuredNats(server.url, found.seed_files, keys_dir)
        settings = NodeSettings(
            nats_url=secured.url,
            nats_nkey_seed_file=secured.seed_files["node:pi-old"],
            node_id="pi-old",
            node_model=MODEL,
            ops_port=0,
            ack_wait_s=5.0,
            heartbeat_interval_s=0.5,
        )
        reply = subjects.gateway_reply("gw-old-hub")
        caplog.set_level(logging.WARNING, logger="koprogo_node")
        async with connected_as(secured, "admin") as admin, connected_as(secured, "router") as router:
            await ensure_streams(admin.js)
            async with (
                listening(admin.nc, subjects.node_reply(reply, "pi-old"), "outcome") as replies,
                listening(admin.nc, subjects.node_heartbeat("pi-old"), "heartbeat") as beats,
                running_node(settings, engine=FakeInferenceEngine()),
            ):
                beat = await beats.next(30)
                cmd = run_inference("Bonjour", reply_subject=reply, max_tokens=16)
                await publish_event(router.js, subjects.run_inference_edge(MODEL), cmd)
                outcome = await replies.next(30)
    finally:
        server.stop()
    assert beat.takes_routed_requests is False
    assert isinstance(outcome, ChatCompleted) and outcome.request_id == cmd.request_id
    assert "takes no requests routed by the gateways" in caplog.text


async def _stored_on(admin: Client, subject: str) -> Any:
    """The last message on `subject` of KOPROGO_EVENTS, as the ledger's consumer receives it."""
    sub = await admin.js.pull_subscribe(
        subject,
        stream=subjects.EVENTS_STREAM,
        config=js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.LAST),
    )
    try:
        return (await sub.fetch(1, timeout=5))[0]
    finally:
        await sub.unsubscribe()


async def test_a_node_cannot_put_its_answer_to_another_nodes_request_in_the_ledger(
    secured: SecuredNats, database_url: str
) -> None:
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        request = chat_requested("copro-edge")
        await project(request, PostgresProjectionUnitOfWork(pool, LEDGER_KEYRING))
        handler = event_batch_handler(
            lambda: PostgresProjectionUnitOfWork(pool, LEDGER_KEYRING), asyncio.Event(), nodes_keyed=True
        )
        forged = _forged_answer(request.id, "pi-1")  # pi-2 answers, naming pi-1 which runs it
        own = subjects.node_chat_completed("copro-edge", "pi-2")
        async with (
            connected_as(secured, "admin") as admin,
            connected_as(secured, "node:pi-1") as runner,
            connected_as(secured, "node:pi-2") as forger,
        ):
            refusals = []
            for subject in (
                subjects.chat_completed("copro-edge"),
                subjects.node_chat_completed("copro-edge", "pi-1"),
            ):
                await forger.nc.publish(subject, forged)
                refusals.append((subject, await forger.refusals.next()))
            # On its own subject the server takes it: the ledger refuses the body naming pi-1.
            await forger.js.publish(own, forged, timeout=2)
            forged_decisions = await handler([await _stored_on(admin, own)])
            stored_forged = await pool.fetchval("SELECT count(*) FROM mcp_responses")
            # pi-1's own answer, on its own subject, is kept.
            mine = subjects.node_chat_completed("copro-edge", "pi-1")
            await runner.js.publish(mine, _forged_answer(request.id, "pi-1"), timeout=2)
            genuine_decisions = await handler([await _stored_on(admin, mine)])
            node_ids = await pool.fetch("SELECT execution_info->>'node_id' AS node FROM mcp_responses")
    finally:
        await pool.close()
    for subject, refusal in refusals:
        assert "permissions violation" in refusal and f'publish to "{subject}"' in refusal, refusal
    assert isinstance(forged_decisions[0], DeadLetter), forged_decisions
    assert "node pi-2 sent a completion naming edge 'pi-1'" in forged_decisions[0].reason
    assert stored_forged == 0
    assert genuine_decisions == [ACK] and [r["node"] for r in node_ids] == ["pi-1"]


def _failed(request_id: str, copro_id: str) -> bytes:
    failure = ChatFailed(
        source="tests/forger",
        copro_id=copro_id,
        request_id=request_id,
        status=503,
        error="node_failed",
        message="Le modèle a échoué.",
    )
    return failure.model_dump_json().encode()


async def test_a_copros_node_cannot_fail_or_answer_another_copros_request_in_the_ledger(
    copro_pools_nats: SecuredNats, database_url: str
) -> None:
    server = copro_pools_nats
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        request = chat_requested("copro-y", model=MODEL)
        await project(request, PostgresProjectionUnitOfWork(pool, LEDGER_KEYRING))
        handler = event_batch_handler(
            lambda: PostgresProjectionUnitOfWork(pool, LEDGER_KEYRING),
            asyncio.Event(),
            nodes_keyed=True,
            roster=RosterFile(roster_file(server.keys_dir)),
        )
        decisions = []
        async with connected_as(server, "admin") as admin:
            await ensure_streams(admin.js)
            async with connected_as(server, "node:pi-x") as pi_x:
                # Its key may publish outcomes under any copro, on its own subjects: the ledger judges.
                for subject, body in (
                    (subjects.node_chat_failed("copro-y", "pi-x"), _failed(request.id, "copro-y")),
                    (subjects.node_chat_failed("copro-x", "pi-x"), _failed(request.id, "copro-x")),
                    (subjects.node_chat_completed("copro-y", "pi-x"), _forged_answer(request.id, "pi-x")),
                ):
                    await pi_x.js.publish(subject, body, timeout=2)
                    decisions.append(await handler([await _stored_on(admin, subject)]))
            status_after_forgeries = await pool.fetchval(
                "SELECT status FROM mcp_requests WHERE id = $1", uuid.UUID(request.id)
            )
            async with connected_as(server, "node:pi-y") as pi_y:
                genuine = subjects.node_chat_failed("copro-y", "pi-y")
                await pi_y.js.publish(genuine, _failed(request.id, "copro-y"), timeout=2)
                genuine_decisions = await handler([await _stored_on(admin, genuine)])
            status = await pool.fetchval(
                "SELECT status FROM mcp_requests WHERE id = $1", uuid.UUID(request.id)
            )
    finally:
        await pool.close()
    reasons = [d[0].reason if isinstance(d[0], DeadLetter) else d for d in decisions]
    assert "node pi-x takes no work of copro copro-y" in reasons[0], reasons
    assert "names copro copro-x, its request copro copro-y" in reasons[1], reasons
    assert "node pi-x takes no work of copro copro-edge" in reasons[2], reasons
    assert status_after_forgeries == "pending"
    assert genuine_decisions == [ACK] and status == "failed"


def _trust_changed(node_id: str, reason: str = "earned") -> NodeTrustChanged:
    return NodeTrustChanged(
        source="tests/grid-scheduler",
        node_id=node_id,
        owner=node_id,
        trusted=reason == "earned",
        reason=reason,  # type: ignore[arg-type]
        task_id=str(uuid.uuid4()),
        valid_streak=5,
        validated=5,
        invalid=0,
    )


async def test_the_grid_keeps_its_trust_book_and_says_a_nodes_standing_which_the_ledger_reads(
    secured: SecuredNats,
) -> None:
    async with connected_as(secured, "grid") as grid, connected_as(secured, "ledger") as ledger:
        book = await grid.js.key_value(subjects.GRID_NODES_BUCKET)
        await book.put("pi-1", b'{"owner": "pi-1", "trusted": true, "valid_streak": 5}')
        assert (await book.get("pi-1")).value == b'{"owner": "pi-1", "trusted": true, "valid_streak": 5}'
        earned = _trust_changed("pi-1")
        ack = await publish_event(grid.js, subjects.grid_node_trust("pi-1"), earned)
        assert ack.stream == subjects.EVENTS_STREAM
        # The ledger's own durable (filter koprogo.events.>, as it runs) receives it.
        spec = ConsumerSpec(
            stream=subjects.EVENTS_STREAM, durable=subjects.LEDGER_DURABLE, filter_subject=subjects.EVENTS_ALL
        )
        await ledger.js.add_consumer(subjects.EVENTS_STREAM, consumer_config(spec))
        sub = await ledger.js.pull_subscribe_bind(
            durable=subjects.LEDGER_DURABLE, stream=subjects.EVENTS_STREAM
        )
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack()
    assert msg.subject == subjects.grid_node_trust("pi-1")
    assert NodeTrustChanged.model_validate_json(msg.data) == earned
    assert ledger.refusals.errors.empty() and grid.refusals.errors.empty()


async def test_a_node_can_neither_say_its_own_standing_nor_touch_the_trust_book(secured: SecuredNats) -> None:
    async with connected_as(secured, "admin") as admin, connected_as(secured, "node:pi-1") as node:
        # A node publishing its own trust (to get its escrow released) is refused by the server.
        await node.nc.publish(
            subjects.grid_node_trust("pi-1"), _trust_changed("pi-1").model_dump_json().encode()
        )
        refusal = await node.refusals.next()
        assert "permissions violation" in refusal and "koprogo.events.grid.node_trust.pi-1" in refusal
        await node.nc.publish(f"$KV.{subjects.GRID_NODES_BUCKET}.pi-1", b'{"trusted": true}')
        refusal = await node.refusals.next()
        assert (
            "permissions violation" in refusal and f"$kv.{subjects.GRID_NODES_BUCKET}.pi-1".lower() in refusal
        )
        await request_refused(node.js.key_value(subjects.GRID_NODES_BUCKET))
        await admin.nc.flush()
        events = await admin.js.stream_info(subjects.EVENTS_STREAM)
        book = await admin.js.stream_info(f"KV_{subjects.GRID_NODES_BUCKET}")
    assert events.state.messages == 0 and book.state.messages == 0
