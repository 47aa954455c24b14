"""Composition root: the scheduler's adapters are built here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import get_args

from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge

from koprogo_grid.adapters.bus import NatsPollAnswers, NatsTaskEventBus, ObjectStoreDocumentBin, TaskTraces
from koprogo_grid.adapters.kv_store import KeyValueNodeStandingStore, KeyValueTaskStore
from koprogo_grid.domain.board import TaskBoard
from koprogo_grid.domain.trust import TrustBook
from koprogo_grid.entrypoints.nats_handlers import KeyCheckingRegistry, on_poll, on_task_event
from koprogo_grid.service_layer.scheduler import GridScheduler
from koprogo_grid.settings import SchedulerSettings
from koprogo_shared import subjects
from koprogo_shared.consumer import ConsumerSpec, run_pull_consumer
from koprogo_shared.grid_stores import grid_stores_for_service
from koprogo_shared.heartbeats import follow_heartbeats
from koprogo_shared.nats_connection import STREAMS_WAIT_S, connect_nats, streams_for_service
from koprogo_shared.node_roster import Roster, RosterFile
from koprogo_shared.ops_http import ops_server
from koprogo_shared.service_runtime import until_stopped_or_failed
from koprogo_shared.task_events import TaskStatus

log = logging.getLogger(__name__)

CONSUMER = ConsumerSpec(
    stream=subjects.EVENTS_STREAM,
    durable=subjects.GRID_SCHEDULER_DURABLE,
    filter_subject=subjects.TASK_EVENTS_ALL,
    ack_wait_s=30.0,
    max_deliver=10,
    batch=64,
)

# Polls answered at once (each may be waiting for its assignment's KV write and event publish).
POLLS_IN_FLIGHT = 256

TASKS = Gauge("koprogo_grid_tasks", "Tasks the scheduler holds, by state", ["state"])
TASK_STATES: tuple[str, ...] = get_args(TaskStatus)
WAITING_NODES = Gauge("koprogo_grid_waiting_nodes", "Nodes waiting on a poll for work")
DISPATCHED = Counter("koprogo_grid_tasks_dispatched_total", "Assignments handed to polling nodes")
VERIFIED = Counter(
    "koprogo_grid_verification_outcomes_total",
    "Tasks decided, by verification outcome (accepted, accepted_unchecked, unverifiable, pending "
    "for a task failed, expired or cancelled before a decision)",
    ["outcome"],
)
REPORTS_REFUSED = Counter(
    "koprogo_grid_reports_refused_total",
    "Task reports refused by the signature checks, by reason",
    ["reason"],
)
TRUST_CHANGES = Counter(
    "koprogo_grid_trust_changes_total", "Changes of nodes' standing, by reason", ["reason"]
)
OWNERS_SHORT = Counter(
    "koprogo_grid_owners_short_total",
    "Tasks whose quorum no live owner could complete, by what was done (accepted_unchecked: "
    "agreeing results taken alone; awaiting_owner: disagreeing results wait; unverifiable: at expiry)",
    ["decision"],
)


def _sync(counter: Counter, seen: dict[str, int], counts: dict[str, int]) -> None:
    """Bring a labelled Prometheus counter up to the scheduler's counts."""
    for label, count in counts.items():
        if count > seen.get(label, 0):
            counter.labels(label).inc(count - seen.get(label, 0))
            seen[label] = count


async def run_scheduler(settings: SchedulerSettings, stop: asyncio.Event) -> None:
    """Run the grid scheduler until `stop` is set."""
    nc, js = await connect_nats(
        settings.nats_url,
        "koprogo-grid-scheduler",
        nkey_seed_file=settings.nats_nkey_seed_file,
        inbox_root=settings.nats_inbox_root,
    )
    try:
        await streams_for_service(js, settings.nats_nkey_seed_file, timeout_s=STREAMS_WAIT_S)
        await grid_stores_for_service(js, settings.nats_nkey_seed_file, timeout_s=STREAMS_WAIT_S)
        roster_file = RosterFile(settings.node_roster_file) if settings.node_roster_file else None

        def roster() -> Roster | None:
            return None if roster_file is None else roster_file()

        traces = TaskTraces()
        answers = NatsPollAnswers(nc, traces)
        signer = settings.signer()
        rules = settings.rules()
        scheduler = GridScheduler(
            TaskBoard(rules),
            await KeyValueTaskStore.open(js),
            NatsTaskEventBus(js, traces),
            answers.respond,
            answers.cancel_node,
            ObjectStoreDocumentBin(js),
            signer=signer,
            trust=TrustBook(rules.trust_after),
            standings=await KeyValueNodeStandingStore.open(js),
            roster=roster,
            salt=settings.salt(),
        )
        await scheduler.start()
        registry = KeyCheckingRegistry(roster, scheduler.heard_key)
        # The grid nodes alive now: whether another owner can still join a task's quorum.
        scheduler.live_nodes = lambda: [
            (c.node_id, c.task_types, c.pools) for c in registry.alive(time.monotonic()) if c.task_types
        ]
        await follow_heartbeats(nc, registry)
        # Nodes are judged lost only once the scheduler has listened long enough to have heard them
        # (their answer to the announce request, or their next heartbeat): a restarted scheduler
        # took every running task back from its live nodes at its first tick.
        judge_nodes_from = time.monotonic() + settings.grid_heartbeat_warmup_s

        async def handle(msg: Msg) -> None:
            await on_task_event(scheduler, msg, traces.remember)

        async def answer_poll(msg: Msg) -> None:
            try:
                await on_poll(scheduler, registry, msg)
            except Exception:
                # The node's request times out and it polls again; its task (if one was assigned and
                # stored) is taken back after the start grace.
                log.exception("poll from %s failed", msg.subject)
            finally:
                polls_in_flight.release()

        # Polls are answered concurrently: one waiting for its assignment's durable writes no
        # longer holds back every poll behind it (the board takes a task off its queue before any
        # await, and a task's transitions hold its lock). Bounded, so a flood waits in the
        # subscription's queue instead of in unbounded tasks.
        polls_in_flight = asyncio.Semaphore(POLLS_IN_FLIGHT)
        answering: set[asyncio.Task[None]] = set()

        async def handle_poll(msg: Msg) -> None:
            await polls_in_flight.acquire()
            task = asyncio.create_task(answer_poll(msg))
            answering.add(task)
            task.add_done_callback(answering.discard)

        polls = await nc.subscribe(subjects.GRID_POLL_ALL, cb=handle_poll, pending_msgs_limit=100_000)

        async def ticks() -> None:
            dispatched = 0
            seen: tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]] = ({}, {}, {}, {})
            while not stop.is_set():
                now = time.monotonic()
                alive = {c.node_id for c in registry.alive(now)} if now >= judge_nodes_from else None
                try:
                    await scheduler.tick(alive)
                except Exception:
                    log.exception("scheduler tick failed; next one in %.1f s", settings.grid_tick_s)
                counts = scheduler.board.counts()
                for state in TASK_STATES:  # a state no task is in any more shows 0, not its last count
                    TASKS.labels(state).set(counts.get(state, 0))
                WAITING_NODES.set(scheduler.board.waiting_count())
                DISPATCHED.inc(scheduler.dispatched - dispatched)
                dispatched = scheduler.dispatched
                _sync(VERIFIED, seen[0], dict(scheduler.outcomes))
                _sync(REPORTS_REFUSED, seen[1], dict(scheduler.refusals))
                _sync(TRUST_CHANGES, seen[2], dict(scheduler.trust_changes))
                _sync(OWNERS_SHORT, seen[3], dict(scheduler.owners_short))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.grid_tick_s)

        async def ready() -> dict[str, bool]:
            return {"nats": nc.is_connected}

        consumer = asyncio.create_task(run_pull_consumer(js, CONSUMER, handle, stop), name="grid-consumer")
        ticker = asyncio.create_task(ticks(), name="grid-ticks")
        server = None
        ops_task = None
        if settings.ops_port:
            server = ops_server(settings.ops_host, settings.ops_port, ready)
            ops_task = asyncio.create_task(server.serve(), name="grid-ops")
        log.info("grid scheduler ready")
        try:
            await until_stopped_or_failed(stop, [consumer, ticker])
        finally:
            stop.set()
            if server:
                server.should_exit = True
            await polls.unsubscribe()
            await asyncio.gather(*answering, return_exceptions=True)
            await asyncio.gather(consumer, ticker, *([ops_task] if ops_task else []), return_exceptions=True)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
