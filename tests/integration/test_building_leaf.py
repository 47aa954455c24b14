"""A building's leaf node and the hub (issue 18): what the building stores while its line is down
reaches the hub's KOPROGO_EVENTS once, in order, by JetStream sourcing; a building never hears
another copro's events or work. Real nats-servers on loopback, the line a TCP proxy the test cuts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from koprogo_cli.embedded_nats import nats_server_binary
from koprogo_cli.nats_auth import render_authorization, render_user
from koprogo_cli.nats_keys import mint_seed
from koprogo_cli.nats_permissions import NatsUser, Permissions
from koprogo_cli.ports import free_port
from koprogo_shared import leaf_site
from koprogo_shared.events import ChatDelivered
from koprogo_shared.nats_connection import ensure_streams
from koprogo_shared.publishing import publish_event
from koprogo_shared.subjects import (
    EVENTS_STREAM,
    chat_delivered,
    cloud_status,
    run_inference_cloud,
    run_inference_edge,
)
from tests.conftest import wait_until
from tests.integration.leaf_support import NatsProcess, TcpProxy, hub_server
from tests.integration.ledger_support import chat_completed, chat_requested, running_ledger, subject_of
from tests.integration.ledger_support import chat_delivered as delivered_for

pytestmark = pytest.mark.integration

COPRO = "c1"
OTHER_COPRO = "c2"
# Sourcing resumes after the leaf link returns: the leaf reconnects within its 1 s interval and the
# hub's source consumer carries on (1-1.5 s measured); when the building restarted meanwhile, or the
# source never got its consumer, the hub finds out and creates one on its retry schedule (19-41 s
# measured, docs/building-offline.md). Generous on a busy 2-core box.
CATCH_UP_S = 90.0


@dataclass
class Site:
    hub: NatsProcess
    building: NatsProcess
    line: TcpProxy
    hub_nc: NATS
    hub_js: JetStreamContext
    building_nc: NATS
    building_js: JetStreamContext

    async def reconnect_building(self) -> None:
        await self.building_nc.close()
        self.building_nc = await nats.connect(self.building.url, max_reconnect_attempts=-1)
        self.building_js = self.building_nc.jetstream(timeout=5)


def _building(base: Path, copro: str, hub_urls: list[str], seed_file: Path) -> NatsProcess:
    base.mkdir(parents=True, exist_ok=True)
    site = leaf_site.LeafSite(
        copro_id=copro,
        store_dir=base / "jetstream",
        hub_urls=hub_urls,
        hub_nkey_seed=seed_file.read_text().strip(),
        port=free_port(),
        log_file=base / "nats-server.log",
    )
    conf = base / "nats-server.conf"
    conf.write_text(leaf_site.render_leaf_config(site))
    conf.chmod(0o600)
    return NatsProcess(conf, site.port, base / "nats-server.log")


def _leaf_user(label: str, seed_file: Path, copro: str) -> NatsUser:
    rules = leaf_site.leaf_link_permissions(copro)
    return NatsUser(label, mint_seed(seed_file), Permissions(rules.publish, rules.subscribe))


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    keys = tmp_path / "keys"
    admin = NatsUser("operator", mint_seed(keys / "admin.nk"), None)
    leaf = _leaf_user(f"building of {COPRO}", keys / "leaf-c1.nk", COPRO)
    hub, hub_leaf_port = hub_server(tmp_path / "hub", render_authorization([admin, leaf]))
    hub.start()
    line = TcpProxy(hub_leaf_port)
    await line.restore()
    building = _building(
        tmp_path / "building", COPRO, [f"nats-leaf://127.0.0.1:{line.port}"], keys / "leaf-c1.nk"
    ).start()
    hub_nc = await nats.connect(hub.url, nkeys_seed=str(keys / "admin.nk"))
    building_nc = await nats.connect(building.url, max_reconnect_attempts=-1)
    found = Site(
        hub,
        building,
        line,
        hub_nc,
        hub_nc.jetstream(timeout=5),
        building_nc,
        building_nc.jetstream(timeout=5),
    )
    try:
        await ensure_streams(found.hub_js, replicas=1)
        await ensure_streams(found.building_js, replicas=1)
        await leaf_site.source_building(found.hub_js, COPRO)
        yield found
    finally:
        await found.building_nc.close()
        await hub_nc.close()
        await line.cut()
        building.stop()
        hub.stop()


def _delivered(copro: str, n: int) -> ChatDelivered:
    return ChatDelivered(
        source="gateway-building", copro_id=copro, request_id=f"req-{n}", latency_ms=float(n)
    )


async def _publish_in_building(site: Site, copro: str, numbers: range) -> list[str]:
    ids = []
    for n in numbers:
        event = _delivered(copro, n)
        ack = await publish_event(site.building_js, chat_delivered(copro), event)
        # Stored by the building's own JetStream, whatever the line's state.
        assert ack.domain == leaf_site.building_domain(COPRO), ack
        ids.append(event.id)
    return ids


async def _event_ids(js: JetStreamContext, copro: str | None = None) -> list[str]:
    """The ids of KOPROGO_EVENTS' messages in stream order (of one copro's subjects, if given)."""
    info = await js.stream_info(EVENTS_STREAM)
    ids: list[str] = []
    if not info.state.messages:
        return ids
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(EVENTS_STREAM, seq)
        if copro is None or (msg.subject or "").split(".")[4] == copro:
            ids.append(json.loads(msg.data or b"{}")["id"])
    return ids


async def _hub_holds(site: Site, expected: list[str]) -> None:
    async def arrived() -> bool:
        return len(await _event_ids(site.hub_js, COPRO)) >= len(expected)

    started = time.monotonic()
    await wait_until(arrived, timeout=CATCH_UP_S, interval=0.25)
    # Shown with `pytest -s`: how long the hub took to catch up (docs/building-offline.md).
    print(f"hub caught up with {len(expected)} building events in {time.monotonic() - started:.1f} s")
    # Nothing more trickles in after the last one arrived.
    await asyncio.sleep(1.5)
    assert await _event_ids(site.hub_js, COPRO) == expected


async def test_events_stored_in_the_building_during_a_cut_reach_the_hub_once_in_order(site: Site) -> None:
    online = await _publish_in_building(site, COPRO, range(0, 5))
    await _hub_holds(site, online)

    await site.line.cut()
    offline = await _publish_in_building(site, COPRO, range(5, 45))
    # The same event also reached the hub another way while the line was down (a publisher that
    # retried at the hub): its Nats-Msg-Id keeps the sourced copy out.
    both_ways = _delivered(COPRO, 45)
    await publish_event(site.hub_js, chat_delivered(COPRO), both_ways)
    await publish_event(site.building_js, chat_delivered(COPRO), both_ways)
    # After it, more: the dropped copy must not hold up the rest (nats-server#4459, fixed in 2.14).
    after = await _publish_in_building(site, COPRO, range(46, 50))
    await asyncio.sleep(2)
    assert await _event_ids(site.hub_js, COPRO) == [*online, both_ways.id], "the cut line carried events"

    await site.line.restore()
    await _hub_holds(site, [*online, both_ways.id, *offline, *after])
    assert await _event_ids(site.building_js) == [*online, *offline, both_ways.id, *after]


async def test_a_building_killed_during_a_cut_loses_nothing(site: Site) -> None:
    online = await _publish_in_building(site, COPRO, range(100, 101))
    await _hub_holds(site, online)
    await site.line.cut()
    before_crash = online + await _publish_in_building(site, COPRO, range(0, 20))
    site.building.kill()
    site.building.start()
    await site.reconnect_building()
    after_crash = await _publish_in_building(site, COPRO, range(20, 30))
    assert await _event_ids(site.building_js) == [*before_crash, *after_crash]

    await site.line.restore()
    await _hub_holds(site, [*before_crash, *after_crash])


async def test_a_building_cut_off_before_its_first_sync_catches_up_when_the_line_returns(site: Site) -> None:
    """The line drops right after the hub declared the source (a building started offline)."""
    await site.line.cut()
    offline = await _publish_in_building(site, COPRO, range(0, 10))
    await asyncio.sleep(2)
    assert await _event_ids(site.hub_js) == []
    await site.line.restore()
    await _hub_holds(site, offline)


async def test_the_hub_keeps_out_a_buildings_events_of_another_copro(site: Site) -> None:
    """A building's stream holding another copro's event (a misconfigured or hostile site)."""
    foreign = await _publish_in_building(site, OTHER_COPRO, range(0, 3))
    own = await _publish_in_building(site, COPRO, range(3, 6))
    await _hub_holds(site, own)
    assert not set(foreign) & set(await _event_ids(site.hub_js))


async def _publish_without_id(site: Site, numbers: range) -> list[str]:
    """Events stored without a Nats-Msg-Id: nothing but the source's own bookkeeping keeps copies out."""
    ids = []
    for n in numbers:
        event = _delivered(COPRO, n)
        await site.building_js.publish(chat_delivered(COPRO), event.model_dump_json().encode())
        ids.append(event.id)
    return ids


async def test_the_stream_declaration_keeps_the_hubs_sources(site: Site) -> None:
    """`koprogo up`, the deployments' setup step and the ledger declare the streams again at each
    start: a building's source stays, and its events keep arriving."""
    first = await _publish_without_id(site, range(0, 5))
    await _hub_holds(site, first)
    await ensure_streams(site.hub_js, replicas=1)
    sources = (await site.hub_js.stream_info(EVENTS_STREAM)).config.sources or []
    assert [source.name for source in sources] == [leaf_site.building_inbox(COPRO)]
    second = await _publish_without_id(site, range(5, 10))
    await _hub_holds(site, [*first, *second])


async def test_a_source_dropped_and_declared_again_resumes_where_it_stopped(site: Site) -> None:
    """A building's source removed (`stop_sourcing_building`) then declared again carries on after
    the last building message the hub holds."""
    first = await _publish_without_id(site, range(0, 5))
    await _hub_holds(site, first)
    await leaf_site.stop_sourcing_building(site.hub_js, COPRO)
    assert not (await site.hub_js.stream_info(EVENTS_STREAM)).config.sources
    second = await _publish_without_id(site, range(5, 10))
    await leaf_site.source_building(site.hub_js, COPRO)
    await _hub_holds(site, [*first, *second])


async def test_declaring_the_source_twice_keeps_one(site: Site) -> None:
    await leaf_site.source_building(site.hub_js, COPRO)
    sources = (await site.hub_js.stream_info(EVENTS_STREAM)).config.sources or []
    assert [source.name for source in sources] == [leaf_site.building_inbox(COPRO)]
    inbox = (await site.hub_js.stream_info(leaf_site.building_inbox(COPRO))).config
    assert [s.external.api for s in inbox.sources or [] if s.external] == [
        leaf_site.building_api_prefix(COPRO)
    ]


async def test_a_building_that_ignores_its_filter_gets_nothing_else_into_the_hubs_events(
    site: Site,
) -> None:
    """A building's server edited by hand can hand the hub's inbox anything (here: the inbox's
    source without filters, which is what such a server would do with them). The hub's own
    filter, between the inbox and KOPROGO_EVENTS, keeps out another copro's events and the
    kinds a building never makes (a grid task decision, a node's trust, an erasure request)."""
    inbox_name = leaf_site.building_inbox(COPRO)
    inbox = (await site.hub_js.stream_info(inbox_name)).config
    unfiltered = [replace(source, subject_transforms=None) for source in inbox.sources or []]
    await site.hub_js.update_stream(replace(inbox, sources=unfiltered))
    foreign = await _publish_in_building(site, OTHER_COPRO, range(0, 2))
    forged = []
    for subject in (
        f"koprogo.events.task.accepted.{COPRO}",
        f"koprogo.events.grid.node_trust.{COPRO}",
        f"koprogo.events.user.erasure_requested.{COPRO}",
    ):
        event = _delivered(COPRO, len(forged) + 10)
        await publish_event(site.building_js, subject, event)
        forged.append(event.id)
    own = await _publish_in_building(site, COPRO, range(2, 4))

    async def inbox_has_all() -> bool:
        return (await site.hub_js.stream_info(inbox_name)).state.messages >= len(foreign) + len(forged) + 2

    # The unfiltered inbox did take them: the check below can fail.
    await wait_until(inbox_has_all, timeout=CATCH_UP_S, interval=0.25)
    await _hub_holds(site, own)
    assert not (set(foreign) | set(forged)) & set(await _event_ids(site.hub_js))
    # What the hub's KOPROGO_EVENTS stored says where it came from: the inbox.
    last = await site.hub_js.get_msg(
        EVENTS_STREAM, (await site.hub_js.stream_info(EVENTS_STREAM)).state.last_seq
    )
    assert (last.headers or {}).get("Nats-Stream-Source", "").startswith(inbox_name), last.headers


# Subjects every building may hear from the hub (a cloud deployment's status): the first comes
# back once the building's interest has reached the hub; the second, sent after the subjects under
# test, says when they would have arrived (one publisher: delivered in order).
INTEREST_MARKER = cloud_status("leaf-test-interest")
END_MARKER = cloud_status("leaf-test-end")


async def _heard(nc: NATS, publish: NATS, subjects: list[str]) -> list[str]:
    """What a client of the building hears of these subjects published at the hub."""
    heard: list[str] = []

    async def on_message(msg: Msg) -> None:
        heard.append(msg.subject)

    async def interest_reached_the_hub() -> bool:
        await publish.publish(INTEREST_MARKER, b"{}")
        await publish.flush()
        await asyncio.sleep(0.05)
        return INTEREST_MARKER in heard

    sub = await nc.subscribe("koprogo.>", cb=on_message)
    await nc.flush()
    await wait_until(interest_reached_the_hub, timeout=10, interval=0.1)
    for subject in subjects:
        await publish.publish(subject, b"{}")
    await publish.publish(END_MARKER, b"{}")
    await publish.flush()
    # Everything published before the end marker has arrived once it has (or never will).
    await wait_until(lambda: END_MARKER in heard, timeout=10)
    await sub.unsubscribe()
    return [subject for subject in heard if subject not in (INTEREST_MARKER, END_MARKER)]


async def test_a_buildings_leaf_never_receives_another_copros_work_or_events(tmp_path: Path) -> None:
    """The hub's permissions hold even for a building configured by hand without the deny lists;
    the same configuration linked with an unrestricted user does hear them (the test can fail)."""
    keys = tmp_path / "keys"
    admin = NatsUser("operator", mint_seed(keys / "admin.nk"), None)
    leaf = _leaf_user(f"building of {COPRO}", keys / "leaf-c1.nk", COPRO)
    unrestricted = NatsUser("a leaf user without permissions", mint_seed(keys / "open.nk"), None)
    hub, hub_leaf_port = hub_server(tmp_path / "hub", render_authorization([admin, leaf, unrestricted]))
    hub.start()
    others_traffic = [
        chat_delivered(OTHER_COPRO),
        run_inference_edge("smollm2", pool=f"copro-{OTHER_COPRO}"),
        run_inference_edge("smollm2"),
    ]
    read_hub: dict[str, bool] = {}
    wrote_hub: dict[str, bool] = {}
    try:
        hub_nc = await nats.connect(hub.url, nkeys_seed=str(keys / "admin.nk"))
        hub_js = hub_nc.jetstream(timeout=5)
        await ensure_streams(hub_js, replicas=1)
        await publish_event(hub_js, chat_delivered(OTHER_COPRO), _delivered(OTHER_COPRO, 0))
        heard = {}
        for name, seed in (("restricted", "leaf-c1.nk"), ("unrestricted", "open.nk")):
            building = _building(
                tmp_path / name, COPRO, [f"nats-leaf://127.0.0.1:{hub_leaf_port}"], keys / seed
            )
            # By hand: no deny lists on the building's side, only the hub's rules stand.
            conf = building.conf.read_text()
            building.conf.write_text(
                "\n".join(line for line in conf.splitlines() if "deny_" not in line) + "\n"
            )
            building.start()
            try:
                building_nc = await nats.connect(building.url)
                await wait_until(lambda b=building: _leaf_connected(b), timeout=20)
                heard[name] = await _heard(building_nc, hub_nc, others_traffic)
                read_hub[name] = await _reads_the_hubs_events(building_nc)
                wrote_hub[name] = await _writes_the_hubs_events(building_nc, hub_js)
                await building_nc.close()
            finally:
                building.stop()
        await hub_nc.close()
    finally:
        hub.stop()
    assert heard["restricted"] == []
    assert sorted(heard["unrestricted"]) == sorted(others_traffic)
    # Nor can it read the hub's stream through the hub's JetStream API, nor publish into it.
    assert read_hub == {"restricted": False, "unrestricted": True}
    assert wrote_hub == {"restricted": False, "unrestricted": True}


async def _reads_the_hubs_events(building_nc: NATS) -> bool:
    """Whether a client of the building gets a message of the hub's KOPROGO_EVENTS (domain `hub`)."""
    try:
        msg = await building_nc.jetstream(domain="hub", timeout=2).get_msg(EVENTS_STREAM, 1)
    except (nats.errors.Error, TimeoutError):
        return False
    return msg.subject == chat_delivered(OTHER_COPRO)


async def _writes_the_hubs_events(building_nc: NATS, hub_js: JetStreamContext) -> bool:
    """Whether a plain publish in the building on another copro's subject lands in the hub's stream."""
    before = (await hub_js.stream_info(EVENTS_STREAM)).state.messages
    await building_nc.publish(
        chat_delivered(OTHER_COPRO), _delivered(OTHER_COPRO, 1).model_dump_json().encode()
    )
    await building_nc.flush()
    await asyncio.sleep(1.0)
    return (await hub_js.stream_info(EVENTS_STREAM)).state.messages > before


def _leaf_connected(building: NatsProcess) -> bool:
    return "Leafnode connection created" in building.log.read_text(errors="replace")


def test_the_rendered_leaf_configuration_is_accepted_by_nats_server(tmp_path: Path) -> None:
    seed_file = tmp_path / "leaf.nk"
    mint_seed(seed_file)
    building = _building(tmp_path / "b", COPRO, ["nats-leaf://hub.example:7422"], seed_file)
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(building.conf)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    conf = building.conf.read_text()
    assert "sync_interval: always" in conf
    assert f'domain: "building-{COPRO}"' in conf


@pytest.mark.parametrize("copro", ["", "a.b", "c*", "x>", "a b", "é" * 3])
def test_a_copro_id_that_cannot_name_a_building_is_refused(copro: str) -> None:
    with pytest.raises(leaf_site.LeafSiteError):
        leaf_site.building_domain(copro)


def test_the_hub_sources_only_the_copros_subjects() -> None:
    source = leaf_site.building_source(COPRO)
    assert source.external is not None
    assert source.external.api == "$JS.building-c1.API"
    filters = [t.src for t in source.subject_transforms or []]
    assert filters == [t.src for t in leaf_site.inbox_source(COPRO).subject_transforms or []]
    assert filters[:2] == ["koprogo.events.chat.requested.c1", "koprogo.events.chat.requested.c1.>"]
    assert not any(f.startswith(("koprogo.events.task.", "koprogo.events.grid.")) for f in filters)
    assert leaf_site.is_building_event("koprogo.events.chat.completed.c1.node.n1")
    assert not leaf_site.is_building_event("koprogo.events.task.accepted.c1")
    assert not leaf_site.is_building_event("koprogo.events.chat")


async def test_the_hubs_ledger_projects_once_what_the_building_answered_during_a_cut(
    tmp_path: Path, database_url: str
) -> None:
    """The hub's ledger (PostgreSQL) holds each of the building's answers once after the line returns.

    The hub's own clients connect without credentials here (`no_auth_user`), as the ledger's test
    harness does; the building's link keeps its own user and permissions.
    """
    keys = tmp_path / "keys"
    leaf = _leaf_user(f"building of {COPRO}", keys / "leaf-c1.nk", COPRO)
    authorization = (
        "authorization {\n  users = [\n"
        f'    {{ user: "operator", password: "{uuid.uuid4().hex}" }}\n'
        f"{render_user(leaf, '    ')}\n  ]\n}}\nno_auth_user: operator\n"
    )
    hub, hub_leaf_port = hub_server(tmp_path / "hub", authorization)
    hub.start()
    line = TcpProxy(hub_leaf_port)
    await line.restore()
    building = _building(
        tmp_path / "building", COPRO, [f"nats-leaf://127.0.0.1:{line.port}"], keys / "leaf-c1.nk"
    ).start()
    building_nc = await nats.connect(building.url)
    building_js = building_nc.jetstream(timeout=5)
    try:
        await ensure_streams(building_js, replicas=1)
        async with running_ledger(database_url, hub.url) as ledger:
            # The ledger's start declared the hub's streams afresh, without sources (see the doc).
            await leaf_site.source_building(ledger.js, COPRO)
            online = chat_requested(COPRO)
            await publish_event(building_js, subject_of(online), online)
            await wait_until(lambda: ledger.applied(online.id), timeout=CATCH_UP_S, interval=0.25)
            await line.cut()
            requests = [chat_requested(COPRO) for _ in range(5)]
            events = [
                event
                for request in requests
                for event in (request, chat_completed(request), delivered_for(request, 900.0))
            ]
            for event in events:
                await publish_event(building_js, subject_of(event), event)
            await asyncio.sleep(2)
            assert not await ledger.applied(events[0].id), "the cut line carried events"
            await line.restore()
            await wait_until(
                lambda: ledger.applied(*(e.id for e in events)), timeout=CATCH_UP_S, interval=0.5
            )
            await wait_until(ledger.settled, timeout=10)
            ids = [r.id for r in [online, *requests]]
            answers = await ledger.db.fetchval(
                "SELECT count(*) FROM mcp_responses WHERE request_id::text = ANY($1::text[])", ids
            )
            stored = await ledger.db.fetchval(
                "SELECT count(*) FROM mcp_requests WHERE id::text = ANY($1::text[])", ids
            )
            assert (stored, answers) == (6, 5)
            assert await ledger.dead_letters() == []
    finally:
        await building_nc.close()
        await line.cut()
        building.stop()
        hub.stop()


async def test_a_building_may_send_the_hub_its_own_copros_cloud_work_only(site: Site) -> None:
    """Its leaf user publishes `koprogo.work.cloud.<its copro>.>` alone: another copro's cloud
    work (which the hub's cloud worker would answer and bill to that copro) never arrives."""
    arrived: list[str] = []

    async def on_message(msg: Msg) -> None:
        arrived.append(msg.subject)

    sub = await site.hub_nc.subscribe("koprogo.work.cloud.>", cb=on_message)
    await site.hub_nc.flush()
    own, foreign = run_inference_cloud(COPRO, "hub-cloud"), run_inference_cloud(OTHER_COPRO, "hub-cloud")

    async def own_arrived() -> bool:
        # The foreign work first: one publisher's messages arrive in order, so once the own work
        # sent after it has arrived, the foreign one would have too.
        await site.building_nc.publish(foreign, b"{}")
        await site.building_nc.publish(own, b"{}")
        await site.building_nc.flush()
        return own in arrived

    # Interest crosses the leaf link within a moment: the building's own copro's work arrives.
    await wait_until(own_arrived, timeout=10, interval=0.5)
    await sub.unsubscribe()
    assert foreign not in arrived and own in arrived
