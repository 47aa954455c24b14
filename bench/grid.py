"""Benchmark: the grid scheduler's dispatch rate, and its behaviour under thousands of polling nodes.

    .venv/bin/python bench/grid.py [--board-tasks 20000] [--board-nodes 100] [--tasks 2000]
                                   [--nodes 50] [--fleet 1000,5000,10000] [--fleet-tasks 1000]
                                   [--step-s 12] [--skip board,nats,fleet]

Everything on a real nats-server started as the stack starts it (`koprogo_cli.embedded_nats.EmbeddedNats`:
JetStream file storage, `sync_interval: always`, i.e. one fsync per stored message); the scheduler
runs as its own process (`koprogo-grid-scheduler`, as `koprogo up` runs it), so its CPU and RSS are
its own. Simulated nodes share the benchmark's process and NATS connections: they heartbeat on
core NATS and poll with core requests, as `koprogo_node.entrypoints.grid_poller` does (the
end-to-end and fleet nodes run that very loop and `GridWorker`, with a no-op executor).

* (a) the pure board (domain only, no I/O): assignments/s for N queued tasks polled by M nodes,
  and for tasks arriving while M nodes wait; the whole life of a task (assign, started,
  completed) with the state JSON the store writes; the upper bound of the scheduler.
* (b) the scheduler on NATS. Baseline measured in the same run: a JetStream publish-with-ack loop
  (one fsynced write per message, a payload the size of a task state), one at a time and 64 in
  flight. Then N tasks submitted in bulk (the scheduler's intake rate), M nodes that only poll
  (dispatch alone: assignments/s), then N more tasks run end to end by M nodes (assign + reply +
  node started/report + completed). The ratio baseline / rate is how many sequential durable
  writes one dispatch costs.
* (c) a fleet: 1k, 5k, 10k nodes heartbeating every 2 s and long-polling (5 s): the lag from a
  heartbeat's publish to the scheduler believing it (a fresh probe node publishes its first
  heartbeat, then polls with `wait_s=0` until the answer is no longer "no_heartbeat"), a poll's
  round trip, the scheduler's CPU and VmRSS at each size; then tasks run end to end under the
  10k fleet.

Prints Markdown tables to paste into bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import nkeys
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.ports import free_port
from koprogo_grid.domain.board import TaskBoard
from koprogo_grid.domain.nodes import PollingNode
from koprogo_grid.domain.rules import GridRules
from koprogo_grid.domain.task_state import NodeFootprint, ReportCheck, TaskState
from koprogo_grid.domain.waiting_nodes import Waiter
from koprogo_node.adapters.grid import MemoryTaskCancels, NatsTaskReports, ObjectStoreDocuments
from koprogo_node.entrypoints.grid_poller import poll_for_tasks
from koprogo_node.service_layer.energy import EnergyProfile
from koprogo_node.service_layer.grid_worker import GridWorker
from koprogo_node.service_layer.tasks.executor import TaskExecutor, TaskOutput, TaskRun
from koprogo_shared import subjects
from koprogo_shared.events import NodeHeartbeat
from koprogo_shared.grid_signing import Signer
from koprogo_shared.grid_stores import declare_grid_stores
from koprogo_shared.nats_connection import ensure_streams
from koprogo_shared.publishing import publish_event
from koprogo_shared.task_events import (
    GridPoll,
    GridPollReply,
    TaskResultReported,
    TaskStarted,
    TaskSubmitted,
    TaskUsage,
    task_event_id,
)

TASK_TYPE = "predict_expenses"
PROBE_TYPE = "ocr_invoice"  # the probes' type: never submitted, so a probe never takes a task
HEARTBEAT_S = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[1]


def log(line: str) -> None:
    print(f"# {line}", file=sys.stderr, flush=True)


# ----- processes --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class CpuMeter:
    """CPU share of each group of processes over a window (100 % = one core)."""

    pids: dict[str, list[int]]
    started: float = 0.0
    at: dict[str, float] = field(default_factory=dict)

    def _now(self, name: str) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids[name])

    def start(self) -> CpuMeter:
        self.started = time.perf_counter()
        self.at = {name: self._now(name) for name in self.pids}
        return self

    def shares(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        return {name: 100 * (self._now(name) - self.at[name]) / wall for name in self.pids}


def fmt_cpu(shares: dict[str, float]) -> str:
    return " / ".join(f"{shares[k]:.0f} %" for k in ("scheduler", "nats", "nodes", "bench") if k in shares)


class SchedulerProcess:
    """`koprogo-grid-scheduler` as `koprogo up` runs it, with its ops server for /metrics."""

    def __init__(self, nats_url: str, workdir: Path, **env: str) -> None:
        self.ops_port = free_port()
        self.log_path = workdir / f"grid-scheduler-{self.ops_port}.log"
        environ = {
            **os.environ,
            "NATS_URL": nats_url,
            "OPS_PORT": str(self.ops_port),
            "LOG_LEVEL": "WARNING",
            **env,
        }
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [str(REPO / ".venv/bin/koprogo-grid-scheduler")], env=environ, stdout=out, stderr=out
            )
        self.pid = self.proc.pid

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"scheduler exited; see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{self.ops_port}/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"scheduler not ready after {timeout}s; see {self.log_path}")

    async def metrics(self) -> dict[str, float]:
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                text = (await client.get(f"http://127.0.0.1:{self.ops_port}/metrics")).text
        except httpx.HTTPError:
            return {}  # its event loop too busy to answer the ops server
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("koprogo_") and " " in line:
                name, value = line.rsplit(" ", 1)
                found[name] = float(value)
        return found

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----- tasks and nodes --------------------------------------------------------------------------


def new_task(i: int, copro: str = "c1") -> TaskSubmitted:
    return TaskSubmitted(
        source="bench",
        copro_id=copro,
        task_type=TASK_TYPE,
        parameters={"horizon_months": i % 24},
        expires_at=datetime.now(UTC) + timedelta(hours=2),
    )


def bench_signer(node_id: str) -> Signer:
    """A simulated node's grid key, the same for a node id every time: the scheduler refuses the
    polls of a node that announces none, and the reports it did not sign (docs/grid-trust.md)."""
    seed = hashlib.sha256(f"koprogo-bench-node:{node_id}".encode()).digest()
    return Signer(nkeys.encode_seed(seed, nkeys.PREFIX_BYTE_USER))


def heartbeat(node_id: str, task_types: Sequence[str], interval_s: float) -> bytes:
    return (
        NodeHeartbeat(
            source=f"bench/{node_id}",
            node_id=node_id,
            models=["none"],
            in_flight=0,
            capacity=1,
            tokens_per_second=0,
            power_watts=10,
            intensity_g_per_kwh=100,
            renewable_attested=False,
            interval_s=interval_s,
            task_types=list(task_types),
            public_key=bench_signer(node_id).public_key,
        )
        .model_dump_json()
        .encode()
    )


class NoopExecutor(TaskExecutor):
    task_type = TASK_TYPE  # type: ignore[misc]

    async def run(self, run: TaskRun) -> TaskOutput:
        return TaskOutput({"ok": True})


async def submit_all(js: JetStreamContext, tasks: Sequence[TaskSubmitted], in_flight: int = 64) -> float:
    """Publish every submission (acked, `in_flight` at once); seconds taken."""
    started = time.perf_counter()
    for i in range(0, len(tasks), in_flight):
        await asyncio.gather(
            *(
                publish_event(js, subjects.task_submitted_key(t.copro_id, t.id), t)
                for t in tasks[i : i + in_flight]
            )
        )
    return time.perf_counter() - started


async def consumer_drained(js: JetStreamContext, timeout: float = 300.0) -> None:
    """Wait until the scheduler's durable has handled every task event stored so far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.GRID_SCHEDULER_DURABLE)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the scheduler did not take the submissions in time")


class EventCounter:
    """Times at which task events of one step were seen (core subscription on the stored subjects)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    async def follow(self, nc: NATS, step: str) -> Any:
        async def on(_: Msg) -> None:
            self.times.append(time.perf_counter())

        return await nc.subscribe(f"koprogo.events.task.{step}.>", cb=on)


async def wait_count(times: list[float], n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(times) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(times)} of {n} seen after {timeout}s")
        await asyncio.sleep(0.02)


def rate(times: Sequence[float], since: float | None = None) -> float:
    """Events per second from `since` (else the first event) to the last one."""
    if len(times) < 2:
        return float("nan")
    first = times[0] if since is None else since
    counted = len(times) - 1 if since is None else len(times)
    return counted / (times[-1] - first)


# ----- (a) the pure board -------------------------------------------------------------------------


def bench_board(n_tasks: int, n_nodes: int) -> list[tuple[str, float]]:
    # One replica per task: the board's own cost per assignment (redundancy multiplies the
    # assignments, not what each costs).
    rules = GridRules(start_grace_s=3600, quorum=1, max_replicas=1)
    footprint = NodeFootprint(power_watts=10, intensity_g_per_kwh=100)
    nodes = [
        PollingNode(f"n{i}", frozenset({TASK_TYPE}), frozenset({subjects.SHARED_POOL}), footprint)
        for i in range(n_nodes)
    ]
    tasks = [new_task(i) for i in range(n_tasks)]
    now = datetime.now(UTC)
    rows: list[tuple[str, float]] = []

    # N queued, M nodes polling in turn: next_task + assign + put (what `_try_assign` does).
    board = TaskBoard(rules)
    for t in tasks:
        step = board.submitted(t, now)
        assert step is not None
        board.put(step.state)
    assigned: list[TaskState] = []
    started = time.perf_counter()
    for node in itertools.cycle(nodes):
        state = board.next_task(node, now)
        if state is None:
            break
        done = board.assign(state, node, now).state
        board.put(done)
        assigned.append(done)
    elapsed = time.perf_counter() - started
    assert len(assigned) == n_tasks
    rows.append((f"assign: {n_tasks} queued tasks, {n_nodes} nodes polling", n_tasks / elapsed))

    # The same with the JSON of the state each transition stores (the KV write's payload).
    board = TaskBoard(rules)
    for t in tasks:
        board.put(TaskState(task=t))
    started = time.perf_counter()
    count = 0
    for node in itertools.cycle(nodes):
        state = board.next_task(node, now)
        if state is None:
            break
        done = board.assign(state, node, now).state
        done.model_dump_json().encode()
        board.put(done)
        count += 1
    rows.append(("assign + state JSON (the store's payload)", count / (time.perf_counter() - started)))

    # Tasks arriving while M nodes wait: submitted + put + matches + next_task + assign (`_offer`).
    board = TaskBoard(rules)
    for node in nodes:
        board.wait(Waiter(node, None, float("inf")))
    started = time.perf_counter()
    for t in tasks:
        submitted = board.submitted(t, now)
        assert submitted is not None
        board.put(submitted.state)
        for waiter in board.matches(now):
            found = board.next_task(waiter.node, now)
            assert found is not None
            board.put(board.assign(found, waiter.node, now).state)
            board.wait(Waiter(waiter.node, None, float("inf")))  # it polls again at once
    rows.append(
        (f"submit + assign to one of {n_nodes} waiting nodes", n_tasks / (time.perf_counter() - started))
    )

    # The rest of each task's life: started, then its report decided (completed), with state JSON.
    starts = [
        TaskStarted(
            id=task_event_id(s.task_id, "started:1"),
            source="bench",
            copro_id=s.task.copro_id,
            task_id=s.task_id,
            attempt=1,
            node_id=s.node_id or "",
        )
        for s in assigned
    ]
    reports = [
        TaskResultReported(
            id=task_event_id(s.task_id, "reported:1"),
            source="bench",
            copro_id=s.task.copro_id,
            task_id=s.task_id,
            attempt=1,
            node_id=s.node_id or "",
            outcome="completed",
            result={"ok": True},
            usage=TaskUsage(duration_s=0.01),
        )
        for s in assigned
    ]
    board = TaskBoard(rules)
    for s in assigned:
        board.put(s)
    started = time.perf_counter()
    for s, start, report in zip(assigned, starts, reports, strict=True):
        began = board.started(s, start, now)
        assert began is not None
        running = began.state
        running.model_dump_json()
        board.put(running)
        step = board.reported(running, report, ReportCheck(agreement_key="ok", trusted=True), now)
        assert step is not None and step.state.status == "completed"
        decided = step.state
        decided.model_dump_json()
        board.put(decided)
    rows.append(("started + completed, with state JSON", n_tasks / (time.perf_counter() - started)))
    return rows


# ----- (b) the scheduler on NATS --------------------------------------------------------------


BASELINE_STREAM = "BENCH_BASELINE"


async def baseline(js: JetStreamContext, payload: bytes, n: int, in_flight: bool = False) -> float:
    """Stored messages/s on a file stream of the same server: one publish-with-ack at a time (each
    waits for its fsync), or all `n` in flight (`publish_async`)."""
    started = time.perf_counter()
    for i in range(n):
        if in_flight:
            await js.publish_async(f"bench.baseline.{i % 100}", payload)
        else:
            await js.publish(f"bench.baseline.{i % 100}", payload)
    if in_flight:
        await js.publish_async_completed()
    return n / (time.perf_counter() - started)


async def beat_forever(
    nc: NATS, beats: Sequence[tuple[str, bytes]], interval_s: float, stop: asyncio.Event
) -> None:
    """Publish every node's heartbeat once per `interval_s`, spread evenly over the interval."""
    for subject, payload in beats:  # every node heard at once, then spread as real nodes are
        await nc.publish(subject, payload)
    await nc.flush()
    slices = 20
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), interval_s / 2)
    while not stop.is_set():
        for k in range(slices):
            for subject, payload in beats[k::slices]:
                await nc.publish(subject, payload)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s / slices)
            if stop.is_set():
                return


async def dispatch_only_node(nc: NATS, node_id: str, seen: list[float], stop: asyncio.Event) -> None:
    """Polls and never runs what it gets (the scheduler keeps it assigned: start grace is long)."""
    poll = GridPoll(node_id=node_id, task_types=[TASK_TYPE], wait_s=5.0).model_dump_json().encode()
    while not stop.is_set():
        try:
            msg = await nc.request(subjects.grid_poll(node_id), poll, timeout=10)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        reply = GridPollReply.model_validate_json(msg.data)
        if reply.assignment is not None:
            seen.append(time.perf_counter())
        elif reply.reason != "no_work":
            await asyncio.sleep(0.05)  # heartbeat not heard yet


def worker(nc: NATS, node_id: str) -> GridWorker:
    js = nc.jetstream()
    return GridWorker(
        node_id,
        f"bench/{node_id}",
        {TASK_TYPE: NoopExecutor()},
        ObjectStoreDocuments(js),
        NatsTaskReports(js, node_id),
        MemoryTaskCancels(),  # nothing is cancelled here
        signer=bench_signer(node_id),
        # What its heartbeats declare (10 W at 100 g/kWh): its attestations are believed.
        energy=EnergyProfile(power_watts=10, intensity_g_per_kwh=100),
    )


async def bench_nats(workdir: Path, n_tasks: int, n_nodes: int) -> dict[str, Any]:
    server = EmbeddedNats(workdir / "nats-b", port=free_port()).start()
    nc = await nats.connect(server.url, pending_size=1 << 26)
    js = nc.jetstream()
    out: dict[str, Any] = {}
    scheduler: SchedulerProcess | None = None
    try:
        await ensure_streams(js)
        await declare_grid_stores(js)
        sample = (
            TaskBoard(GridRules())
            .assign(
                TaskState(task=new_task(0)),
                PollingNode(
                    "n0",
                    frozenset({TASK_TYPE}),
                    frozenset({"shared"}),
                    NodeFootprint(power_watts=1, intensity_g_per_kwh=1),
                ),
                datetime.now(UTC),
            )
            .state
        )
        payload = b"x" * len(sample.model_dump_json())
        out["state_bytes"] = len(payload)
        await js.add_stream(
            js_api.StreamConfig(
                name=BASELINE_STREAM, subjects=["bench.baseline.>"], storage=js_api.StorageType.FILE
            )
        )
        await baseline(js, payload, 50)  # warm
        # This box is shared: the baseline is measured again right before each phase, and each
        # phase is compared with the one measured next to it.
        n_base = max(300, n_tasks // 4)
        out["baseline_pipelined"] = await baseline(js, payload, n_base, in_flight=True)
        out["baseline_pipelined_one"] = await baseline(js, payload, n_base)
        log(
            f"baseline: {out['baseline_pipelined_one']:.0f} writes/s one at a time, {out['baseline_pipelined']:.0f} in flight"
        )

        scheduler = SchedulerProcess(server.url, workdir, GRID_START_GRACE_S="3600")
        await scheduler.ready()
        pids = {"scheduler": [scheduler.pid], "nats": [server.proc.pid], "bench": [os.getpid()]}  # type: ignore[union-attr]

        # Intake: N submissions published (64 in flight), the scheduler stores each.
        out["intake_base"] = await baseline(js, payload, n_base)
        meter = CpuMeter(pids).start()
        started = time.perf_counter()
        await submit_all(js, [new_task(i) for i in range(n_tasks)])
        await consumer_drained(js)
        out["intake"] = n_tasks / (time.perf_counter() - started)
        out["intake_cpu"] = meter.shares()
        log(f"intake: {out['intake']:.0f} tasks/s")

        # Dispatch alone: M nodes poll, nobody runs anything.
        stop = asyncio.Event()
        ids = [f"d{i}" for i in range(n_nodes)]
        beats = [(subjects.node_heartbeat(i), heartbeat(i, [TASK_TYPE], 60.0)) for i in ids]
        beating = asyncio.create_task(beat_forever(nc, beats, 20.0, stop))
        await asyncio.sleep(0.5)
        assigned: list[float] = []
        out["dispatch_base"] = await baseline(js, payload, n_base)
        meter = CpuMeter(pids).start()
        started = time.perf_counter()
        nodes = [asyncio.create_task(dispatch_only_node(nc, i, assigned, stop)) for i in ids]
        await wait_count(assigned, n_tasks, timeout=600)
        out["dispatch"] = rate(assigned, started)
        out["dispatch_cpu"] = meter.shares()
        # Their last polls end (answered "no work" within 5 s): none is left waiting to take the
        # next phase's tasks to a node that has gone.
        stop.set()
        await asyncio.wait_for(asyncio.gather(beating, *nodes), 30)
        log(f"dispatch alone: {out['dispatch']:.0f} assignments/s")

        # End to end: N more tasks, M nodes running the real grid loop and worker (no-op executor).
        await submit_all(js, [new_task(i) for i in range(n_tasks)])
        await consumer_drained(js)
        completed, assigned_events = EventCounter(), EventCounter()
        subs = [await completed.follow(nc, "completed"), await assigned_events.follow(nc, "assigned")]
        stop = asyncio.Event()
        ids = [f"e{i}" for i in range(n_nodes)]
        beats = [(subjects.node_heartbeat(i), heartbeat(i, [TASK_TYPE], 60.0)) for i in ids]
        beating = asyncio.create_task(beat_forever(nc, beats, 20.0, stop))
        await asyncio.sleep(0.5)
        out["e2e_base"] = await baseline(js, payload, n_base)
        meter = CpuMeter(pids).start()
        started = time.perf_counter()
        nodes = [asyncio.create_task(poll_for_tasks(nc, worker(nc, i), stop)) for i in ids]
        await wait_count(completed.times, n_tasks, timeout=600)
        out["e2e"] = rate(completed.times, started)
        out["e2e_assign"] = rate(assigned_events.times, started)
        out["end_base"] = await baseline(js, payload, n_base)
        out["e2e_cpu"] = meter.shares()
        log(f"end to end: {out['e2e']:.0f} tasks/s")
        stop.set()
        await asyncio.wait_for(asyncio.gather(beating, *nodes), 30)
        for sub in subs:
            await sub.unsubscribe()
        out["scheduler_log"] = scheduler.log_path
        return out
    finally:
        if scheduler is not None:
            scheduler.stop()
        with contextlib.suppress(Exception):
            await nc.close()
        server.stop()


# ----- (c) a fleet -----------------------------------------------------------------------------


class FleetWorker:
    """Simulated nodes in a process of their own (`grid.py --fleet-worker`): the nodes' event loop
    is not the probes', and several such processes share the two cores as the OS sees fit."""

    def __init__(self, nats_url: str, first: int, count: int, workdir: Path) -> None:
        self.stats = workdir / f"fleet-{first}.json"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--fleet-worker", nats_url, str(first), str(count), str(self.stats)]
        )
        self.pid = self.proc.pid

    def read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.stats.read_text()))
        except (OSError, ValueError):
            return {"refused": 0, "timed_out": 0, "late": []}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def run_fleet_worker(nats_url: str, first: int, count: int, stats: Path) -> None:
    """`--fleet-worker`: `count` nodes heartbeating and polling until SIGTERM; every second their
    troubles and how late this process's event loop woke go to `stats` (JSON)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    conns: list[NATS] = []
    running: list[asyncio.Task[Any]] = []
    late: list[tuple[float, float]] = []

    async def lateness() -> None:
        while not stop.is_set():
            asked = time.perf_counter()
            await asyncio.sleep(0.1)
            late.append((time.time(), time.perf_counter() - asked - 0.1))
            del late[:-600]

    running.append(asyncio.create_task(lateness()))
    per_conn = 2500
    for start in range(first, first + count, per_conn):
        nc = await nats.connect(nats_url, pending_size=1 << 26)
        conns.append(nc)
        ids = [f"f{i}" for i in range(start, min(first + count, start + per_conn))]
        beats = [(subjects.node_heartbeat(i), heartbeat(i, [TASK_TYPE], HEARTBEAT_S)) for i in ids]
        running.append(asyncio.create_task(beat_forever(nc, beats, HEARTBEAT_S, stop)))
        await asyncio.sleep(0.3)  # their first heartbeats before their first polls
        running.extend(asyncio.create_task(staggered_node(nc, i, stop)) for i in ids)
    while not stop.is_set():
        tmp = stats.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"refused": TROUBLES.refused, "timed_out": TROUBLES.timed_out, "late": late})
        )
        tmp.replace(stats)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    for nc in conns:
        with contextlib.suppress(Exception):
            await nc.close()


async def staggered_node(nc: NATS, node_id: str, stop: asyncio.Event) -> None:
    """The real grid loop, started at a random moment of a poll's wait: nodes that joined at
    different times do not poll in step."""
    await asyncio.sleep(random.uniform(0, 5.0))
    await poll_for_tasks(nc, worker(nc, node_id), stop)


PROBE_LIMIT_S = 20.0


async def probe_heartbeat_lag(nc: NATS, k: int) -> float:
    """Seconds from a new node's first heartbeat to the scheduler answering its poll as a known
    node (it heartbeats on every 2 s meanwhile, as a node does); PROBE_LIMIT_S when never."""
    node_id = f"probe-{k}"
    poll = GridPoll(node_id=node_id, task_types=[PROBE_TYPE], wait_s=0).model_dump_json().encode()
    beat = heartbeat(node_id, [PROBE_TYPE], HEARTBEAT_S)
    published = beaten = time.perf_counter()
    await nc.publish(subjects.node_heartbeat(node_id), beat)
    while (now := time.perf_counter()) - published < PROBE_LIMIT_S:
        if now - beaten >= HEARTBEAT_S:
            await nc.publish(subjects.node_heartbeat(node_id), beat)
            beaten = now
        try:
            msg = await nc.request(subjects.grid_poll(node_id), poll, timeout=PROBE_LIMIT_S)
        except (TimeoutError, nats.errors.TimeoutError):
            break
        if GridPollReply.model_validate_json(msg.data).reason != "no_heartbeat":
            return time.perf_counter() - published
    return PROBE_LIMIT_S


async def poll_round_trip(nc: NATS) -> float:
    """A known node's poll with `wait_s=0`, answered "no work"; PROBE_LIMIT_S when not answered."""
    node_id = "probe-rtt"
    await nc.publish(subjects.node_heartbeat(node_id), heartbeat(node_id, [PROBE_TYPE], 60.0))
    poll = GridPoll(node_id=node_id, task_types=[PROBE_TYPE], wait_s=0).model_dump_json().encode()
    started = time.perf_counter()
    try:
        await nc.request(subjects.grid_poll(node_id), poll, timeout=PROBE_LIMIT_S)
    except (TimeoutError, nats.errors.TimeoutError):
        return PROBE_LIMIT_S
    return time.perf_counter() - started


class NodeTroubles(logging.Handler):
    """Counts the node loop's warnings (a refused or timed-out poll) instead of printing each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.refused = 0
        self.timed_out = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "refused" in text:
            self.refused += 1
        elif "failed" in text:
            self.timed_out += 1


TROUBLES = NodeTroubles()


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    """How late this process's event loop wakes (the simulated nodes share it)."""
    while not stop.is_set():
        asked = time.perf_counter()
        await asyncio.sleep(0.1)
        samples.append(time.perf_counter() - asked - 0.1)


def ms(values: Sequence[float], q: float = 0.5) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f}"


async def bench_fleet(
    workdir: Path, sizes: Sequence[int], n_tasks: int, step_s: float, tasks_limit_s: float = 180.0
) -> dict[str, Any]:
    server = EmbeddedNats(workdir / "nats-c", port=free_port()).start()
    conns: list[NATS] = []
    workers: list[FleetWorker] = []
    scheduler: SchedulerProcess | None = None
    stop = asyncio.Event()
    running: list[asyncio.Task[Any]] = []
    out: dict[str, Any] = {"steps": []}
    try:
        admin = await nats.connect(server.url)
        conns.append(admin)
        js = admin.jetstream()
        await ensure_streams(js)
        await declare_grid_stores(js)
        scheduler = SchedulerProcess(server.url, workdir)
        await scheduler.ready()
        await asyncio.sleep(2)
        out["rss_idle"] = rss_mib(scheduler.pid)
        probe = await nats.connect(server.url)
        conns.append(probe)
        lag_samples: list[float] = []
        running.append(asyncio.create_task(loop_lag(lag_samples, stop)))
        per_worker = 2500
        have = 0
        k = itertools.count()

        def meter() -> CpuMeter:
            return CpuMeter(
                {
                    "scheduler": [scheduler.pid],  # type: ignore[union-attr]
                    "nats": [server.proc.pid],  # type: ignore[union-attr]
                    "nodes": [w.pid for w in workers],
                    "bench": [os.getpid()],
                }
            ).start()

        def troubles() -> tuple[int, int]:
            stats = [w.read() for w in workers]
            return sum(x["refused"] for x in stats), sum(x["timed_out"] for x in stats)

        def nodes_late(since: float) -> list[float]:
            return [late for w in workers for t, late in w.read()["late"] if t >= since]

        for size in sizes:
            while have < size:
                count = min(per_worker, size - have)
                workers.append(FleetWorker(server.url, have, count, workdir))
                have += count
            log(f"fleet: {size} nodes, settling")
            await asyncio.sleep(10)  # every node started, has beaten and polled at least once
            before = await scheduler.metrics()
            troubles_before = troubles()
            window_start = time.time()
            cpu = meter()
            del lag_samples[:]
            hb_lags: list[float] = []
            rtts: list[float] = []
            until = time.monotonic() + step_s
            while time.monotonic() < until:
                hb_lags.append(await probe_heartbeat_lag(probe, next(k)))
                rtts.append(await poll_round_trip(probe))
                await asyncio.sleep(0.25)
            after = await scheduler.metrics()
            refused = (
                sum(v for n, v in after.items() if n.startswith("koprogo_grid_polls_refused_total"))
                - sum(v for n, v in before.items() if n.startswith("koprogo_grid_polls_refused_total"))
                if before and after
                else float("nan")
            )
            troubles_after = troubles()
            step = {
                "nodes": size,
                "hb_lag": hb_lags,
                "rtt": rtts,
                "cpu": cpu.shares(),
                "rss": rss_mib(scheduler.pid),
                "waiting": after.get("koprogo_grid_waiting_nodes", float("nan")),
                "refused": refused,
                "loop_lag": list(lag_samples),
                "nodes_late": nodes_late(window_start),
                "node_refused": troubles_after[0] - troubles_before[0],
                "node_timeouts": troubles_after[1] - troubles_before[1],
                "load": os.getloadavg()[0],
            }
            out["steps"].append(step)
            log(
                f"fleet {size}: heartbeat lag p50 {ms(hb_lags)} ms p95 {ms(hb_lags, 0.95)} ms, "
                f"poll rtt {ms(rtts)} ms, rss {step['rss']:.0f} MiB, waiting {step['waiting']:.0f}, "
                f"nodes' loops late p95 {ms(step['nodes_late'], 0.95)} ms, cpu {fmt_cpu(step['cpu'])}"
            )

        # Tasks under the largest fleet: submitted in bulk, run end to end by whichever nodes wait.
        completed = EventCounter()
        sub = await completed.follow(probe, "completed")
        cpu = meter()
        started = time.perf_counter()
        submit = asyncio.create_task(submit_all(js, [new_task(i) for i in range(n_tasks)]))
        hb_during: list[float] = []
        while len(completed.times) < n_tasks and time.perf_counter() - started < tasks_limit_s:
            hb_during.append(await probe_heartbeat_lag(probe, next(k)))
            await asyncio.sleep(0.25)
        await submit
        out["fleet_done"] = len(completed.times)
        out["fleet_e2e"] = rate(completed.times, started)
        out["fleet_e2e_cpu"] = cpu.shares()
        out["fleet_hb_during"] = hb_during
        await sub.unsubscribe()
        out["rss_final"] = rss_mib(scheduler.pid)
        out["scheduler_log"] = scheduler.log_path
        return out
    finally:
        stop.set()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for worker in workers:
            worker.stop()
        if scheduler is not None:
            scheduler.stop()
        for nc in conns:
            with contextlib.suppress(Exception):
                await nc.close()
        server.stop()


# ----- report ------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, board: list[tuple[str, float]], b: dict[str, Any], c: dict[str, Any]
) -> None:
    goal = 5000.0
    if board:
        print(
            f"\n(a) the pure board, {args.board_tasks} tasks, {args.board_nodes} nodes (one core, no I/O)\n"
        )
        print("| path | per second |")
        print("|---|---|")
        for name, per_s in board:
            print(f"| {name} | {per_s:,.0f} |")
    if b:
        print(f"\n(b) the scheduler on NATS (fsync every write), {args.tasks} tasks, {args.nodes} nodes\n")
        print(
            "| measure | per second | baseline writes/s, measured just before | baseline / this "
            "| CPU scheduler / nats / bench |"
        )
        print("|---|---|---|---|---|")
        one = b["baseline_pipelined_one"]
        print(
            f"| baseline: publish-with-ack, one at a time ({b['state_bytes']} B) | {one:,.0f} | {one:,.0f} | 1.00 | |"
        )
        piped = b["baseline_pipelined"]
        print(
            f"| baseline: publish-with-ack, all in flight | {piped:,.0f} | {one:,.0f} | {one / piped:.2f} | |"
        )
        for key, name in (
            ("intake", "intake: submissions stored by the scheduler"),
            ("dispatch", "dispatch alone (assignments answered)"),
            ("e2e", "end to end (assign, started, report, completed)"),
        ):
            base = b[f"{key}_base"]
            print(
                f"| {name} | {b[key]:,.0f} | {base:,.0f} | {base / b[key]:.2f} | {fmt_cpu(b[f'{key}_cpu'])} |"
            )
        print(f"| baseline again, after the phases | {b['end_base']:,.0f} | | | |")
        met = "met" if b["dispatch"] >= goal else "not met"
        print(
            f"\nGoal ≥ {goal:,.0f} tasks/s dispatched: **{met}** ({b['dispatch']:,.0f} assignments/s alone, "
            f"{b['e2e']:,.0f} tasks/s end to end, assignments meanwhile {b['e2e_assign']:,.0f}/s)"
        )
    if c:
        print(
            f"\n(c) a fleet heartbeating every {HEARTBEAT_S:.0f} s and long-polling (5 s); scheduler idle RSS "
            f"{c['rss_idle']:.1f} MiB\n"
        )
        print(
            "| nodes | heartbeat believed after p50 / p95 / max (ms) | poll round trip p50 / p95 (ms) "
            "| waiting polls | polls refused (scheduler) | node loops refused / timed out "
            "| CPU scheduler / nats / nodes / probes | nodes' loops late p95 / max (ms) | probes' loop late p95 (ms) "
            "| load avg | scheduler VmRSS | above idle, per node |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in c["steps"]:
            per_node = (s["rss"] - c["rss_idle"]) * 1024 / s["nodes"]
            print(
                f"| {s['nodes']:,} | {ms(s['hb_lag'])} / {ms(s['hb_lag'], 0.95)} / {ms(s['hb_lag'], 1.0)} "
                f"| {ms(s['rtt'])} / {ms(s['rtt'], 0.95)} | {s['waiting']:,.0f} | {s['refused']:.0f} "
                f"| {s['node_refused']} / {s['node_timeouts']} | {fmt_cpu(s['cpu'])} "
                f"| {ms(s['nodes_late'], 0.95)} / {ms(s['nodes_late'], 1.0)} | {ms(s['loop_lag'], 0.95)} "
                f"| {s['load']:.1f} | {s['rss']:.1f} MiB | {per_node:.1f} KiB |"
            )
        lags = [x for s in c["steps"][-1:] for x in s["hb_lag"]]
        half = len(lags) // 2
        if half:
            print(
                f"\nLargest fleet, heartbeat lag over its window: first half p50 {ms(lags[:half])} ms, "
                f"second half p50 {ms(lags[half:])} ms"
            )
        print(
            f"\nUnder the largest fleet: {args.fleet_tasks} tasks submitted in bulk, {c['fleet_done']} completed, at "
            f"{c['fleet_e2e']:,.0f} tasks/s (CPU {fmt_cpu(c['fleet_e2e_cpu'])}); heartbeat lag meanwhile "
            f"p50 {ms(c['fleet_hb_during'])} / max {ms(c['fleet_hb_during'], 1.0)} ms; scheduler VmRSS after "
            f"{c['rss_final']:.1f} MiB"
        )
    print(f"\nbench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--board-tasks", type=int, default=20000)
    parser.add_argument("--board-nodes", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--fleet", default="1000,5000,10000")
    parser.add_argument("--fleet-tasks", type=int, default=1000)
    parser.add_argument("--step-s", type=float, default=12.0)
    parser.add_argument("--skip", default="", help="comma-separated: board, nats, fleet")
    parser.add_argument(
        "--fleet-worker", nargs=4, metavar=("URL", "FIRST", "COUNT", "STATS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    # The node loop's warnings (a refused or timed-out poll) stay visible; asyncio's complaints
    # about sockets of simulated nodes closed at the end do not.
    logging.basicConfig(level=logging.WARNING, format="# %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    node_log = logging.getLogger("koprogo_node.entrypoints.grid_poller")
    node_log.addHandler(TROUBLES)
    node_log.propagate = False
    if args.fleet_worker:
        url, first, count, stats = args.fleet_worker
        random.seed(int(first))
        asyncio.run(run_fleet_worker(url, int(first), int(count), Path(stats)))
        return 0
    random.seed(7)
    skip = set(filter(None, args.skip.split(",")))
    os.environ.pop("NATS_URL", None)
    workdir = Path(tempfile.mkdtemp(prefix="koprogo-bench-grid-"))
    log(f"work directory {workdir}")
    board = [] if "board" in skip else bench_board(args.board_tasks, args.board_nodes)
    b = {} if "nats" in skip else asyncio.run(bench_nats(workdir, args.tasks, args.nodes))
    sizes = [int(x) for x in args.fleet.split(",") if x]
    c = {} if "fleet" in skip else asyncio.run(bench_fleet(workdir, sizes, args.fleet_tasks, args.step_s))
    report(args, board, b, c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
