"""Whatever dies under load, nothing is lost, nothing is counted twice, every caller gets an answer
or a clear error, and `/mcp/v1/stats` counts exactly the answers given (issue 12).

Each test runs the chat path as separate processes (`fault_stack`), has three clients send chats
one after another (one of them streamed), SIGKILLs one service while they do (PostgreSQL: an
immediate shutdown; NATS: nats-server itself, restarted on its own data, or the node of a
three-node cluster that leads the event log), starts it again with
the same environment, lets the clients go on until the stack answers again, waits until
JetStream has delivered and had acknowledged everything, and then sets each client's outcome
beside the ledger's rows and the stats (`agreement.Agreement`).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.embedded_pg import EmbeddedPostgres
from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.nats_connection import connect_nats, declare_streams
from tests.conftest import available_models, wait_until
from tests.fault.agreement import Agreement, counted_per_request, ledger_rows, stats
from tests.fault.chat_load import ChatLoad, NodesAtWork
from tests.fault.conftest import (
    CLOUD_DEPLOYMENT,
    CLOUD_MODEL,
    FaultStackFactory,
    cloud_deployments,
)
from tests.fault.jetstream_state import backlog, settled, when_held
from tests.fault.stack_processes import ProcessStack
from tests.integration.nats_cluster_support import NatsCluster, wait_until_replicas_current

pytestmark = pytest.mark.integration

Fault = Callable[[ProcessStack, ChatLoad], Awaitable[str]]
# A probe's answer: long enough (about a second on two cores) to be still generating when its node dies.
LONG_ANSWER_TOKENS = 64
NATS_DOWN_S = 3.0
# Longer than a publish's retries (PUBLISH_RETRY_S, 12 s): one replica cannot hide the loss.
CLUSTER_NODE_DOWN_S = 15.0


async def model_available(stack: ProcessStack, model: str) -> bool:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=5) as client:
        return (await available_models(client)).get(model, False)


async def under_load(
    stack: ProcessStack, model: str, fault: Fault, *, transport_errors_allowed: bool = False
) -> str:
    """Run the load, inject `fault` once a few answers came, go on until the stack answers again,
    then compare. Returns the summary line; fails with every disagreement found."""
    await wait_until(lambda: model_available(stack, model), timeout=30)
    load = ChatLoad(stack.gateway_url, model, stack.chat_timeout_s)
    began = time.monotonic()
    load.start()
    not_served_again = None
    try:
        await load.answers(at_least=3)
        what = await fault(stack, load)
        after = sum(o.answered for o in load.outcomes)
        # Served again: three more answers (requests sent during the fault among them).
        try:
            await load.answers(at_least=after + 3, timeout=stack.chat_timeout_s + 20)
        except AssertionError as exc:
            not_served_again = f"not served again after the fault: {exc}"
    finally:
        await load.stop()
    loaded_s = time.monotonic() - began
    await settled(stack.nats_url)
    agreement = Agreement(
        load.outcomes,
        await ledger_rows(stack.database_url),
        await stats(stack.gateway_url),
        await counted_per_request(stack.gateway_url, load.outcomes),
        stack.chat_timeout_s,
        transport_errors_allowed=transport_errors_allowed,
    )
    summary = (
        f"{what}; {load.summary()}, under load for {loaded_s:.1f}s; "
        f"the ledger kept {agreement.late_answers()} late answer(s) aside, "
        f"{agreement.undelivered()} undelivered answer(s) stored uncounted"
    )
    problems = agreement.problems()
    assert not_served_again is None and not problems, (
        f"{summary}\n{not_served_again or 'served again after the fault'}\n{agreement.report()}\n"
        f"logs in {stack['gateway'].log_dir}"
    )
    return summary


async def test_killing_the_router_under_load_loses_nothing_and_counts_each_answer_once(
    fault_stack: FaultStackFactory,
) -> None:
    stack = await fault_stack(edge_nodes=1)

    async def kill_router(stack: ProcessStack, load: ChatLoad) -> str:
        # It holds a request only while it routes it (about a millisecond): often missed.
        held = await when_held(stack.nats_url, subjects.EVENTS_STREAM, subjects.ROUTER_DURABLE, timeout=2)
        await stack["router"].kill()
        await asyncio.sleep(1.0)  # requests keep coming while no router runs
        waiting = await backlog(stack.nats_url, subjects.EVENTS_STREAM, subjects.ROUTER_DURABLE)
        await stack["router"].restart()
        return (
            f"router killed {'holding a request' if held else 'between requests'}, "
            f"restarted with {waiting} request(s) waiting for it"
        )

    print(await under_load(stack, BUNDLED_MODEL_ID, kill_router))


def kill_the_node_running_a_long_answer(*, streamed: bool, restart_once_its_caller_answered: bool) -> Fault:
    """SIGKILL the edge node generating a long answer (a probe beside the load; streamed, once
    its caller had its first pieces), then start it again: at once, or once the probe's caller
    got its outcome (so that the work item, never acknowledged, runs again on the restarted node
    after its caller gave up: a late answer)."""

    async def fault(stack: ProcessStack, load: ChatLoad) -> str:
        async with NodesAtWork(stack.nats_url) as at_work:
            seen, probe = load.probe(max_tokens=LONG_ANSWER_TOKENS, streamed=streamed)
            node = await at_work.node_running(seen.copro_id)
        if streamed:
            await wait_until(lambda: len(seen.pieces) >= 2 or probe.done(), timeout=10, interval=0.005)
        pieces_before = len(seen.pieces)
        assert not probe.done(), f"the long answer ended before {node} was killed: {seen.seen()}"
        await stack[node].kill()
        if restart_once_its_caller_answered:
            await probe
        else:
            await asyncio.sleep(0.5)
        await stack[node].restart()
        await probe
        answered_by = f" from {seen.answer['execution_info']['node_id']}" if seen.answer else ""
        got = f"{seen.seen()}{answered_by}" + (f", {len(seen.pieces)} pieces in all" if streamed else "")
        kind = f"streamed probe, {pieces_before} pieces received" if streamed else "whole probe"
        return f"{node} killed mid-answer ({kind}; its caller then got {got}), restarted"

    return fault


async def test_killing_an_edge_node_mid_answer_while_another_serves_the_model_loses_nothing_and_counts_each_answer_once(
    fault_stack: FaultStackFactory,
) -> None:
    stack = await fault_stack(edge_nodes=2)
    fault = kill_the_node_running_a_long_answer(streamed=True, restart_once_its_caller_answered=False)
    print(await under_load(stack, BUNDLED_MODEL_ID, fault))


async def test_killing_the_only_edge_node_mid_answer_gives_a_clear_error_and_counts_only_answers(
    fault_stack: FaultStackFactory,
) -> None:
    stack = await fault_stack(edge_nodes=1)
    fault = kill_the_node_running_a_long_answer(streamed=False, restart_once_its_caller_answered=True)
    print(await under_load(stack, BUNDLED_MODEL_ID, fault))


async def test_killing_the_cloud_worker_mid_call_loses_nothing_and_counts_each_answer_once(
    fault_stack: FaultStackFactory, cloud_server: int, tmp_path: Path
) -> None:
    stack = await fault_stack(edge_nodes=0, cloud_deployments_file=cloud_deployments(tmp_path, cloud_server))

    async def kill_the_cloud_worker_mid_call(stack: ProcessStack, load: ChatLoad) -> str:
        # The gateway routes these chats itself: each is stored once, on the audit log, where the
        # deployment's durable of routed requests holds it while the provider call runs.
        durable = subjects.routed_requests_durable(CLOUD_DEPLOYMENT)
        held = await when_held(stack.nats_url, subjects.EVENTS_STREAM, durable)
        await stack["cloud"].kill()
        await asyncio.sleep(0.5)
        waiting = await backlog(stack.nats_url, subjects.EVENTS_STREAM, durable)
        await stack["cloud"].restart()
        return (
            f"cloud worker killed {'holding a routed request' if held else 'between requests'}, "
            f"restarted with {waiting} request(s) waiting for it"
        )

    print(await under_load(stack, CLOUD_MODEL, kill_the_cloud_worker_mid_call))


async def test_killing_the_ledger_under_load_loses_nothing_and_counts_each_answer_once(
    fault_stack: FaultStackFactory,
) -> None:
    stack = await fault_stack(edge_nodes=1)

    async def kill_the_ledger_mid_batch(stack: ProcessStack, load: ChatLoad) -> str:
        held = await when_held(stack.nats_url, subjects.EVENTS_STREAM, subjects.LEDGER_DURABLE, timeout=3)
        await stack["ledger"].kill()
        await asyncio.sleep(1.0)
        waiting = await backlog(stack.nats_url, subjects.EVENTS_STREAM, subjects.LEDGER_DURABLE)
        await stack["ledger"].restart()
        return (
            f"ledger killed {'holding a batch' if held else 'between batches'}, "
            f"restarted with {waiting} event(s) waiting for it"
        )

    print(await under_load(stack, BUNDLED_MODEL_ID, kill_the_ledger_mid_batch))


async def test_killing_the_gateway_under_load_gives_each_caller_an_answer_or_an_error_and_counts_only_answers(
    fault_stack: FaultStackFactory,
) -> None:
    stack = await fault_stack(edge_nodes=1)

    async def kill_the_gateway_mid_requests(stack: ProcessStack, load: ChatLoad) -> str:
        await wait_until(lambda: load.in_flight >= 2, timeout=10, interval=0.005)
        in_flight = load.in_flight
        await stack["gateway"].kill()
        await asyncio.sleep(0.5)
        await stack["gateway"].restart()
        return f"gateway killed with {in_flight} requests in flight, restarted"

    # The requests the killed gateway held end without an HTTP answer (connection closed):
    # for a caller of a dead server that is the clear error; what matters is that none of them
    # is counted as answered, though their nodes finish them and the ledger stores the answers
    # (no gateway is left to give a verdict, findings 1 and 2's mechanism does not apply).
    print(
        await under_load(
            stack, BUNDLED_MODEL_ID, kill_the_gateway_mid_requests, transport_errors_allowed=True
        )
    )


async def test_restarting_postgresql_under_load_the_ledger_catches_up_and_the_stats_are_right(
    fault_stack: FaultStackFactory, restartable_postgres: EmbeddedPostgres
) -> None:
    stack = await fault_stack(edge_nodes=1, database=restartable_postgres.url)

    async def restart_postgres(stack: ProcessStack, load: ChatLoad) -> str:
        server = restartable_postgres
        assert server.proc is not None
        # Immediate shutdown: every session cut, no checkpoint; the next start recovers from the WAL.
        server.proc.send_signal(signal.SIGQUIT)
        await asyncio.to_thread(server.proc.wait, 30)
        await asyncio.sleep(1.0)
        waiting = await backlog(stack.nats_url, subjects.EVENTS_STREAM, subjects.LEDGER_DURABLE)
        await asyncio.to_thread(server.start)
        return (
            f"PostgreSQL shut down (immediate), started again with {waiting} event(s) waiting for the ledger"
        )

    print(await under_load(stack, BUNDLED_MODEL_ID, restart_postgres))


async def test_killing_nats_under_load_loses_no_acknowledged_request_and_counts_each_answer_once(
    fault_stack: FaultStackFactory, restartable_nats: EmbeddedNats
) -> None:
    # What this found, each in some runs only (the timing decides): the rate limiter refusing
    # every chat for as long as traffic lasted (its back-off re-armed by its own refusals);
    # an answer the caller got counted as failed, or one it did not get counted (the router
    # refused a redelivered ChatRequested it had already dispatched: its ack was lost with the
    # server); the caller's text and CO2 differing from the stored ones (the item ran twice).
    stack = await fault_stack(edge_nodes=1, nats=restartable_nats.url)

    async def kill_nats(stack: ProcessStack, load: ChatLoad) -> str:
        server = restartable_nats
        assert server.proc is not None
        # SIGKILL: what JetStream acknowledged must be on disk already (sync_interval: always).
        server.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(server.proc.wait, 30)
        await asyncio.sleep(NATS_DOWN_S)  # longer than a heartbeat's grace and a publish's retries
        await asyncio.to_thread(server.start)
        return f"nats-server killed, started again on its data {NATS_DOWN_S:g}s later"

    print(await under_load(stack, BUNDLED_MODEL_ID, kill_nats))


async def test_killing_the_cluster_node_leading_the_event_log_under_load_loses_nothing_and_counts_each_answer_once(
    fault_stack: FaultStackFactory, nats_cluster: NatsCluster
) -> None:
    # Issue 12, finding 9: on a cluster whose streams had one replica, killing the node that held
    # KOPROGO_EVENTS turned every chat into 503 bus_unavailable until it came back. With the
    # streams at three replicas (the setup step's choice on three servers), the services given
    # the servers' list must ride out the leader's death and the election, and reconnect by themselves.
    await asyncio.wait_for(declare_streams(nats_cluster.url), 60)
    nc, js = await connect_nats(nats_cluster.url, "fault-cluster-check")
    try:
        for stream in (subjects.EVENTS_STREAM, subjects.WORK_STREAM):
            await wait_until_replicas_current(js, stream, 3)
    finally:
        await nc.close()
    stack = await fault_stack(edge_nodes=1, nats=nats_cluster.url)
    loads: list[ChatLoad] = []

    async def kill_the_event_log_leader(stack: ProcessStack, load: ChatLoad) -> str:
        loads.append(load)
        nc, js = await connect_nats(nats_cluster.url, "fault-cluster-leader")
        try:
            info = await js.stream_info(subjects.EVENTS_STREAM)
        finally:
            await nc.close()
        assert info.cluster is not None and info.cluster.leader, f"{subjects.EVENTS_STREAM} has no leader"
        leader = info.cluster.leader
        nats_cluster.kill(leader)
        await asyncio.sleep(CLUSTER_NODE_DOWN_S)
        nats_cluster.restart(leader)
        return (
            f"NATS node {leader}, leading {subjects.EVENTS_STREAM} (R{info.config.num_replicas}), SIGKILLed, "
            f"started again on its store {CLUSTER_NODE_DOWN_S:g}s later"
        )

    print(await under_load(stack, BUNDLED_MODEL_ID, kill_the_event_log_leader))
    # With one replica the same kill answered every chat 503 bus_unavailable until the node came
    # back (clear errors, nothing lost): three replicas must keep the event log taking requests.
    refused = Counter(o.kind for o in loads[0].outcomes if "bus_" in o.kind)
    assert not refused, f"chats refused while a node of three was down: {dict(refused)}"
