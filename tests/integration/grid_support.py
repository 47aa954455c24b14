"""Grid nodes for tests: the node's real grid loop and worker, with executors the test chooses.

A test node signs its reports (docs/grid-trust.md): its key (`node_signer`, derived from its id so
a node id keeps its key from one test to the next) is announced in its heartbeats, where the
scheduler pins it, and each report is signed for the assignment it answers, with a declared
energy attestation (the heartbeat's 10 W x the seconds it ran, at 100 g/kWh).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import nats.js.errors
import nkeys
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_grid.bootstrap import run_scheduler
from koprogo_grid.settings import SchedulerSettings
from koprogo_node.adapters.grid import NatsTaskCancels, NatsTaskReports, ObjectStoreDocuments
from koprogo_node.entrypoints.grid_poller import poll_for_tasks
from koprogo_node.service_layer.grid_worker import GridWorker, TaskReports
from koprogo_node.service_layer.tasks.executor import TaskExecutor, TaskOutput, TaskRun
from koprogo_shared import subjects
from koprogo_shared.cancels import CancelListener
from koprogo_shared.events import NodeHeartbeat
from koprogo_shared.grid_signing import Signer, sign_report
from koprogo_shared.publishing import publish_event
from koprogo_shared.task_events import (
    DocumentRef,
    EnergyAttestation,
    TaskAssignment,
    TaskResultReported,
    TaskStarted,
    TaskSubmitted,
    task_event_adapter,
)

# What test nodes declare (heartbeat) and attest (reports).
NODE_POWER_WATTS = 10.0
NODE_INTENSITY_G_PER_KWH = 100.0


def node_signer(node_id: str) -> Signer:
    """The node's signing key, the same for a node id every time (a pinned key stays its key)."""
    seed = hashlib.sha256(f"koprogo-test-node:{node_id}".encode()).digest()
    return Signer(nkeys.encode_seed(seed, nkeys.PREFIX_BYTE_USER))


def declared_attestation(seconds: float) -> EnergyAttestation:
    return EnergyAttestation(
        source="grid",
        wh=NODE_POWER_WATTS * seconds / 3600,
        measured_by="declared",
        duration_s=seconds,
        power_watts=NODE_POWER_WATTS,
        intensity_g_per_kwh=NODE_INTENSITY_G_PER_KWH,
    )


class SigningReports(TaskReports):
    """Reports signed by the node for the assignment they answer, attesting the declared power
    (`declared_attestation`). `signer` may be another key than the one announced (a forger)."""

    def __init__(self, inner: TaskReports, signer: Signer) -> None:
        self._inner = inner
        self._signer = signer
        self.assignments: dict[tuple[str, int], TaskAssignment] = {}

    async def started(self, event: TaskStarted, copro_id: str | None) -> None:
        await self._inner.started(event, copro_id)

    async def reported(self, event: TaskResultReported, copro_id: str | None) -> None:
        assignment = self.assignments.get((event.task_id, event.attempt))
        if assignment is not None:
            # The heartbeat's declared power x the seconds it ran, whatever the worker attested.
            event = event.model_copy(update={"attestation": declared_attestation(event.usage.duration_s)})
            event = sign_report(self._signer, event, assignment)
        await self._inner.reported(event, copro_id)


class SigningGridWorker(GridWorker):
    """The real worker, remembering each assignment so its report can be signed for it."""

    signing: SigningReports

    async def run(self, assignment: TaskAssignment) -> TaskResultReported | None:
        self.signing.assignments[(assignment.task_id, assignment.attempt)] = assignment
        try:
            return await super().run(assignment)
        finally:
            self.signing.assignments.pop((assignment.task_id, assignment.attempt), None)


class EchoExecutor(TaskExecutor):
    """Returns its parameters (and the document's size) after `seconds`; counts its runs."""

    def __init__(self, task_type: str, seconds: float = 0.0) -> None:
        self.task_type = task_type  # type: ignore[misc]
        self.seconds = seconds
        self.runs = 0

    async def run(self, run: TaskRun) -> TaskOutput:
        self.runs += 1
        waited = 0.0
        while waited < self.seconds:
            if run.cancelled.is_set():
                from koprogo_node.service_layer.tasks.executor import TaskCancelledError

                raise TaskCancelledError()
            await asyncio.sleep(0.05)
            waited += 0.05
        size = len(run.document.data) if run.document else None
        return TaskOutput({"echo": run.parameters, "document_bytes": size})


def heartbeat(
    node_id: str,
    task_types: Sequence[str],
    *,
    interval_s: float = 0.5,
    pools: Sequence[str] = ("shared",),
    public_key: str | None = None,
) -> NodeHeartbeat:
    return NodeHeartbeat(
        source=f"test/{node_id}",
        node_id=node_id,
        models=["none"],
        in_flight=0,
        capacity=1,
        tokens_per_second=0,
        power_watts=NODE_POWER_WATTS,
        intensity_g_per_kwh=NODE_INTENSITY_G_PER_KWH,
        renewable_attested=False,
        interval_s=interval_s,
        task_types=list(task_types),
        pools=list(pools),
        public_key=public_key,
    )


@asynccontextmanager
async def grid_node(
    nats_url: str,
    node_id: str,
    executors: Mapping[str, TaskExecutor],
    *,
    interval_s: float = 0.5,
    signer: Signer | None = None,
    report_signer: Signer | None = None,
) -> AsyncIterator[asyncio.Event]:
    """A node that heartbeats and runs the grid loop until the returned event is set (or the block ends).

    Setting the event is a node that dies: no goodbye heartbeat, no report for the task in hand.
    It announces `signer`'s key (default `node_signer(node_id)`) and signs its reports with
    `report_signer` (default the same key; another one makes a forger).
    """
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    signer = signer or node_signer(node_id)
    signing = SigningReports(NatsTaskReports(js, node_id), report_signer or signer)
    # The node's cancels as a node without a key hears them (`bootstrap`: a listener of the grid's own).
    cancels = CancelListener(nc, subjects.node_cancels(node_id), threading.Event)
    await cancels.start()
    worker = SigningGridWorker(
        node_id,
        f"test/{node_id}",
        executors,
        ObjectStoreDocuments(js),
        signing,
        NatsTaskCancels(cancels, node_id),
    )
    worker.signing = signing
    stop = asyncio.Event()
    beat = heartbeat(node_id, sorted(executors), interval_s=interval_s, public_key=signer.public_key)

    async def beats() -> None:
        while not stop.is_set():
            await nc.publish(subjects.node_heartbeat(node_id), beat.model_dump_json().encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    beating = asyncio.create_task(beats())
    polling = asyncio.create_task(poll_for_tasks(nc, worker, stop))
    try:
        yield stop
    finally:
        stop.set()
        polling.cancel()
        await asyncio.gather(beating, polling, return_exceptions=True)
        with contextlib.suppress(Exception):
            await nc.close()


@asynccontextmanager
async def scheduler(nats_url: str, **settings: Any) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_scheduler(SchedulerSettings(nats_url=nats_url, ops_port=0, **settings), stop)
    )
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def submit(
    js: JetStreamContext,
    task_type: str = "predict_expenses",
    copro: str = "c1",
    document: DocumentRef | None = None,
    **parameters: Any,
) -> TaskSubmitted:
    now = datetime.now(UTC)
    task = TaskSubmitted(
        source="test",
        copro_id=copro,
        task_type=task_type,  # type: ignore[arg-type]
        parameters=parameters,
        document=document,
        expires_at=now + timedelta(hours=1),
    )
    await publish_event(js, subjects.task_submitted_key(copro, task.id), task)
    return task


class TaskEvents:
    """Every task event on KOPROGO_EVENTS, as it is stored (read back with an ordered consumer)."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self.events: list[Any] = []
        self._sub: Any = None

    async def start(self) -> TaskEvents:
        js = self._nc.jetstream()

        async def on(msg: Any) -> None:
            self.events.append((msg.subject, task_event_adapter.validate_json(msg.data)))

        self._sub = await js.subscribe(subjects.TASK_EVENTS_ALL, cb=on, ordered_consumer=True)
        return self

    def of(self, task_id: str, kind: str | None = None) -> list[Any]:
        found = [
            e
            for _, e in self.events
            if getattr(e, "task_id", getattr(e, "id", None)) == task_id or e.id == task_id
        ]
        return [e for e in found if kind is None or e.type == f"koprogo.task.{kind}.v1"]

    def done(self, task_id: str) -> Callable[[], bool]:
        finals = ("completed", "failed", "expired", "cancelled")
        return lambda: any(self.of(task_id, k) for k in finals)


async def forget_grid_nodes(js: JetStreamContext) -> None:
    """Drop the scheduler's trust book (KOPROGO_GRID_NODES): a test starts with no node trusted."""
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_key_value(subjects.GRID_NODES_BUCKET)
