"""Composition root: the node's adapters are built here and nowhere else.

Start-up order matters: the HTTP port answers /health at once (and /ready says "not
ready"), the model is loaded before anything subscribes, then NATS, the first
heartbeat and the work consumer. Shutdown is the reverse, after the in-flight answer
is finished (or, past the grace period, abandoned and NAKed for another node).

On the grid (docs/grid-trust.md) the node signs with its grid key (`grid_signer`), announced in
its heartbeats; it checks assignments against GRID_SCHEDULER_PUBLIC_KEY, attests its energy
(`energy_meter`) and names its model file's sha256 in model results, hashed once at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_node.adapters import metrics
from koprogo_node.adapters.answers import FileAnswerRecord
from koprogo_node.adapters.energy_meter import MeterFile, read_counter
from koprogo_node.adapters.grid import NatsTaskCancels, NatsTaskReports, ObjectStoreDocuments
from koprogo_node.adapters.host_resources import LocalHostResources
from koprogo_node.adapters.http_download import HttpDownloader
from koprogo_node.adapters.inference import InferenceEngine
from koprogo_node.adapters.llama_engine import LlamaEngine
from koprogo_node.adapters.model_files import ModelFile, model_file_sha256, resolve_model
from koprogo_node.adapters.on_demand_engine import OnDemandEngine
from koprogo_node.adapters.outcomes import NatsOutcomeSink
from koprogo_node.domain.errors import ModelFileError, NodeError
from koprogo_node.entrypoints.grid_poller import poll_for_tasks
from koprogo_node.entrypoints.heartbeats import HeartbeatPublisher
from koprogo_node.entrypoints.http import node_routes
from koprogo_node.entrypoints.mcp import node_mcp
from koprogo_node.entrypoints.nats_worker import (
    OneAtATime,
    consume,
    declare_routed,
    grid_work_consumer,
    routed_consumer,
    work_consumer,
    work_item_handler,
)
from koprogo_node.service_layer.energy import DeclaredPower, EnergyMeter, EnergyProfile, MeterReadError
from koprogo_node.service_layer.grid_worker import GridWorker, TaskCancels
from koprogo_node.service_layer.inference import EdgeNode, InferenceService, NodeLoad
from koprogo_node.service_layer.model_store import ModelStore
from koprogo_node.service_layer.tasks.executor import TaskExecutor
from koprogo_node.settings import NodeSettings
from koprogo_shared import subjects
from koprogo_shared.cancels import CancelListener
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.consumer import ConsumerSpec, Handler
from koprogo_shared.grid_signing import SignatureError, Signer, load_or_create_signer
from koprogo_shared.grid_stores import object_store_stream
from koprogo_shared.nats_connection import NatsCredentialsError, connect_nats, wait_for_streams
from koprogo_shared.ops_http import ops_server

log = logging.getLogger(__name__)

T = TypeVar("T")
# Called with the grid worker once it is built, before the grid loop starts: `tests/grid_cheaters.py`
# wraps its executors, signer or meter there (a real node that cheats, for the trust tests).
GridWorkerHook = Callable[[GridWorker], None]


def build_model_store(settings: NodeSettings) -> ModelStore:
    """The `koprogo-node models` use cases over this host's disk, RAM and network."""
    return ModelStore(settings.models_dir, LocalHostResources(), HttpDownloader())


def build_engine(settings: NodeSettings) -> tuple[ModelFile, InferenceEngine]:
    """The model (its id and file) to serve and the llama.cpp engine for it (raises ModelFileError)."""
    model = resolve_model(settings.node_model, settings.models_dir, settings.node_model_id)

    def llama() -> InferenceEngine:
        return LlamaEngine(model.path, n_ctx=settings.llama_n_ctx, threads=settings.llama_threads)

    log.info("model %s from %s", model.model_id, model.path)
    # The bundled model is 100 MB: it stays resident. A pulled one is unloaded when idle.
    if model.model_id == BUNDLED_MODEL_ID or not settings.keep_alive_s:
        return model, llama()
    log.info("model %s is unloaded after %.0fs idle", model.model_id, settings.keep_alive_s)
    return model, OnDemandEngine(
        llama, settings.keep_alive_s, on_load=metrics.MODEL_LOAD_SECONDS.labels(model.model_id).observe
    )


async def run_node(
    settings: NodeSettings,
    stop: asyncio.Event,
    *,
    engine: InferenceEngine | None = None,
    grid_hook: GridWorkerHook | None = None,
) -> None:
    """Run one edge node until `stop` is set; raises NodeError when it cannot start or keep serving.

    `engine` replaces the llama.cpp engine (unit tests); it then serves
    `settings.node_model_id or settings.node_model`, and its results name no model file.
    `grid_hook` is given the grid worker before the grid loop starts (see GridWorkerHook).
    """
    model_path: Path | None = None
    if engine is None:
        model, engine = build_engine(settings)
        model_id, model_path = model.model_id, model.path
    else:
        model_id = settings.node_model_id or settings.node_model
    node = EdgeNode(settings.node_id, model_id, settings.footprint())
    load = NodeLoad()
    _observe_node(model_id, engine, load)
    nc: NATS | None = None
    loaded_engine = engine

    async def ready() -> dict[str, bool]:
        return {"nats": nc is not None and nc.is_connected, "model": loaded_engine.loaded}

    server = None
    server_task: asyncio.Task[None] | None = None
    lifespans = contextlib.AsyncExitStack()
    if settings.ops_port:
        routes = node_routes(model_id, engine)
        if settings.mcp_enabled:
            token = settings.node_mcp_token.get_secret_value() if settings.node_mcp_token else None
            mcp_routes, mcp_lifespan = node_mcp(node, engine, load, settings.ops_host, token)
            routes += mcp_routes
            await lifespans.enter_async_context(mcp_lifespan)
            log.info("MCP server at http://%s:%d/mcp", settings.ops_host, settings.ops_port)
        server = ops_server(settings.ops_host, settings.ops_port, ready, routes)
        server_task = asyncio.create_task(server.serve())
    # A grid node names its model file's sha256 in model results: hashed while the model loads
    # (a multi-GB file takes as long to read again), awaited before the grid loop starts.
    model_digest = asyncio.create_task(_model_sha256(model_path)) if settings.joins_grid else None
    try:
        started = time.perf_counter()
        await engine.load()
        took = time.perf_counter() - started
        if not isinstance(engine, OnDemandEngine):  # which times its own loads
            metrics.MODEL_LOAD_SECONDS.labels(model_id).observe(took)
        log.info("model loaded in %.2fs (n_ctx %d)", took, engine.context_length)
        connected = await _connect_unless_stopped(settings, stop)
        if connected is None:
            return
        nc, js = connected
        # A node may not declare streams (its NATS identity cannot): the operator's setup step does.
        if await _unless_stopped(wait_for_streams(js, [subjects.WORK_STREAM]), stop) is None:
            return
        # With a key, its replies and cancels carry its id (adapters/outcomes.py).
        keyed_node_id = node.node_id if settings.nats_nkey_seed_file else None
        # The answers it stored, recorded on disk for the items redelivered after that.
        answers = FileAnswerRecord(settings.answers_directory())
        sink = NatsOutcomeSink(nc, js, keyed_node_id, answers)
        await sink.start()
        # The scheduler's cancels of this node's tasks come on its cancel subjects: heard by the
        # sink's listener when the node holds a key (its chats' cancels come there), else by one
        # of the grid's own.
        task_cancels = sink.node_cancels
        own_cancels = None
        if model_digest is not None and task_cancels is None:
            own_cancels = task_cancels = CancelListener(
                nc, subjects.node_cancels(node.node_id), threading.Event
            )
        try:
            if own_cancels is not None:
                await own_cancels.start()
            service = InferenceService(node, engine, sink, load=load)
            grid = None
            if model_digest is not None and task_cancels is not None:
                cancels = NatsTaskCancels(task_cancels, node.node_id)
                grid = await _grid_worker(
                    settings, service, engine, js, await model_digest, cancels, grid_hook
                )
            await _serve(settings, service, nc, js, stop, resident=_residency(engine), grid=grid)
        finally:
            if own_cancels is not None:
                await own_cancels.close()
            await sink.close()
    finally:
        if model_digest is not None:
            model_digest.cancel()  # stopped before the grid started: its outcome is not needed
            await asyncio.gather(model_digest, return_exceptions=True)
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()
        if server is not None and server_task is not None:
            server.should_exit = True
            await asyncio.gather(server_task, return_exceptions=True)
        await lifespans.aclose()
        await engine.close()
        log.info("node %s stopped", node.node_id)


def _observe_node(model_id: str, engine: InferenceEngine, load: NodeLoad) -> None:
    """The node's gauges, read at scrape time from its load and its engine."""
    metrics.QUEUE_DEPTH.labels(model_id).set_function(lambda: load.in_flight)
    if isinstance(engine, OnDemandEngine):
        on_demand = engine
        metrics.MODEL_RESIDENT.labels(model_id).set_function(lambda: float(on_demand.resident))
    else:
        metrics.MODEL_RESIDENT.labels(model_id).set_function(lambda: float(engine.loaded))


def _residency(engine: InferenceEngine) -> Callable[[], bool]:
    """What the heartbeat says of the model: in memory now, or loaded again on the next request."""
    if isinstance(engine, OnDemandEngine):
        return lambda: engine.resident
    return lambda: True


async def _unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> asyncio.Task[T] | None:
    """`work`, finished (its result or error in the task), or None (cancelled) if `stop` is set first."""
    task = asyncio.create_task(work)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task


async def _connect_unless_stopped(
    settings: NodeSettings, stop: asyncio.Event
) -> tuple[NATS, JetStreamContext] | None:
    """Connect (retrying while NATS is down, as a Pi may boot first), unless told to stop meanwhile.

    With `NATS_NKEY_SEED_FILE` the node authenticates with its own nkey; an unknown key is
    refused by the server at every attempt (logged) until its configuration lists it.
    """
    connecting = connect_nats(
        settings.nats_url,
        f"koprogo-node-{settings.node_id}",
        nkey_seed_file=settings.nats_nkey_seed_file,
        inbox_root=settings.nats_inbox_root,
    )
    try:
        done = await _unless_stopped(connecting, stop)
        return None if done is None else done.result()
    except NatsCredentialsError as exc:
        raise NodeError(str(exc)) from None
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise NodeError(f"cannot connect to NATS at {settings.nats_url}: {exc!r}") from None


async def _serve(
    settings: NodeSettings,
    service: InferenceService,
    nc: NATS,
    js: JetStreamContext,
    stop: asyncio.Event,
    *,
    resident: Callable[[], bool],
    grid: GridNode | None,
) -> None:
    """Heartbeats, the work consumers and (with `--grid`) the grid loop, until `stop`; then the
    in-flight item is settled."""
    model_id = service.node.model_id
    ack_wait_s, max_deliver = settings.ack_wait_s, settings.max_deliver
    turns = OneAtATime()
    work = work_item_handler(service, ack_wait_s, max_deliver, turns=turns).handle
    consumers: list[tuple[ConsumerSpec, Handler]] = [
        (work_consumer(model_id, ack_wait_s, max_deliver, p), work) for p in settings.pools
    ]
    if grid is not None and subjects.SHARED_POOL in settings.pools:
        # Grid chats may come from any copro: only a shared-pool node takes them (as for grid
        # tasks, a copro's own node works for that copro alone). `_consume` runs one item at a time.
        consumers.append((grid_work_consumer(model_id, ack_wait_s, max_deliver), work))
    # Declared before the first heartbeat says the node takes them: a gateway routes nothing to
    # its pools before their durables exist (they start with what is stored from then on).
    routed = (
        await declare_routed(
            js, [routed_consumer(model_id, ack_wait_s, max_deliver, p) for p in settings.pools]
        )
        if settings.takes_routed_requests
        else []
    )
    routed_work = work_item_handler(service, ack_wait_s, max_deliver, routed=True, turns=turns).handle
    consumers += [(spec, routed_work) for spec in routed]
    heartbeats = HeartbeatPublisher(
        nc,
        service,
        settings.heartbeat_interval_s,
        resident,
        settings.pools,
        grid.worker.task_types if grid else (),
        grid.public_key if grid else None,
        takes_routed_requests=bool(routed),
    )
    await heartbeats.start()
    consumer = asyncio.create_task(consume(js, consumers, turns, stop))
    grid_loop = asyncio.create_task(poll_for_tasks(nc, grid.worker, stop)) if grid else None
    log.info(
        "node %s serving %s (durables %s)",
        service.node.node_id,
        model_id,
        ", ".join(spec.durable for spec, _ in consumers),
    )
    try:
        await _until_stopped(stop, consumer)
    finally:
        await _finish_in_flight(consumer, settings.shutdown_grace_s)
        if grid_loop is not None:
            await _finish_in_flight(grid_loop, settings.shutdown_grace_s)
        await heartbeats.stop()


@dataclass(frozen=True, slots=True)
class GridNode:
    """The grid worker, and the key the node announces (its own, whatever signs its reports)."""

    worker: GridWorker
    public_key: str


def grid_signer(settings: NodeSettings) -> Signer:
    """The node's grid key: its NATS nkey when it has one, else its own seed (minted once)."""
    try:
        if settings.nats_nkey_seed_file is not None:
            return Signer.from_seed_file(settings.nats_nkey_seed_file)
        seed_file = settings.grid_seed_file()
        minted = not seed_file.exists()
        signer = load_or_create_signer(seed_file)
    except SignatureError as exc:
        raise NodeError(f"the node's grid key: {exc}") from None
    except OSError as exc:
        raise NodeError(f"cannot make the node's grid key at {settings.grid_seed_file()}: {exc}") from None
    log.info("grid key %s %s %s", signer.public_key, "minted in" if minted else "from", seed_file)
    return signer


def energy_profile(settings: NodeSettings) -> EnergyProfile:
    return EnergyProfile(
        source=settings.energy_source,
        solar_share=settings.attested_solar_share,
        power_watts=settings.power_watts,
        intensity_g_per_kwh=settings.intensity_g_per_kwh,
        device_class=settings.device_class,
    )


def energy_meter(settings: NodeSettings) -> EnergyMeter:
    """The smart plug's counter file when ENERGY_METER_FILE names one, else the declared power."""
    if settings.energy_meter_file is None:
        return DeclaredPower(settings.power_watts)
    try:
        log.info(
            "energy meter %s reads %.3f Wh",
            settings.energy_meter_file,
            read_counter(settings.energy_meter_file),
        )
    except MeterReadError as exc:
        # The exporter may start after the node: each attempt reads it again (declared power meanwhile).
        log.warning("%s; attempts attest the declared power until it can be read", exc)
    return MeterFile(settings.energy_meter_file, settings.power_watts)


async def _model_sha256(model_path: Path | None) -> str | None:
    if model_path is None:
        return None
    started = time.perf_counter()
    try:
        sha = await asyncio.to_thread(model_file_sha256, model_path)
    except ModelFileError as exc:
        raise NodeError(str(exc)) from None
    log.info("model file sha256 %s (%.1fs)", sha, time.perf_counter() - started)
    return sha


async def _grid_worker(
    settings: NodeSettings,
    service: InferenceService,
    engine: InferenceEngine,
    js: JetStreamContext,
    model_sha256: str | None,
    cancels: TaskCancels,
    hook: GridWorkerHook | None,
) -> GridNode:
    """The grid worker over this node's engine, with the executors of the task types it runs."""
    if settings.grid_url and not settings.grid_url.startswith(("nats://", "tls://")):
        raise NodeError(
            f"--grid-url takes the grid's NATS server (nats://host:4222), not {settings.grid_url!r}"
        )
    if settings.grid_url and settings.grid_url != settings.nats_url:
        raise NodeError(
            f"the grid is reached through the node's NATS server: start the node with --nats-url {settings.grid_url}"
        )
    # It reads documents only (its key may look up no other grid store).
    await wait_for_streams(js, [object_store_stream(subjects.DOCUMENTS_BUCKET)])
    node_id = service.node.node_id
    signer = grid_signer(settings)
    worker = GridWorker(
        node_id,
        service.node.source,
        build_executors(settings.grid_task_types, engine, model_sha256),
        ObjectStoreDocuments(js),
        NatsTaskReports(js, node_id),
        cancels,
        signer=signer,
        scheduler_key=settings.grid_scheduler_public_key,
        energy=energy_profile(settings),
        meter=energy_meter(settings),
        on_refusal=lambda _assignment, reason: metrics.GRID_ASSIGNMENTS_REFUSED.labels(reason).inc(),
    )
    if settings.grid_scheduler_public_key is None:
        log.warning(
            "GRID_SCHEDULER_PUBLIC_KEY is not set: an assignment signed by any key is believed "
            "(set it to the key `koprogo up` or `koprogo node join` gives)"
        )
    if hook is not None:
        hook(worker)
    return GridNode(worker, signer.public_key)


def build_executors(
    task_types: Sequence[str], engine: InferenceEngine, model_sha256: str | None = None
) -> dict[str, TaskExecutor]:
    """One executor per task type the node runs; their engines (OCR, PDF, statsmodels) come from
    the node's `grid` extra, imported only by a node that joins the grid. `model_sha256`: the
    served model file's digest, named in the results the model wrote."""
    executors: dict[str, TaskExecutor] = {}
    for task_type in task_types:
        if task_type == "ocr_invoice":
            from koprogo_node.adapters.tasks.ocr_engine import RapidOcrEngine
            from koprogo_node.service_layer.tasks.ocr_invoice import OcrInvoiceExecutor

            executors[task_type] = OcrInvoiceExecutor(RapidOcrEngine(), engine, model_sha256)
        elif task_type == "summarize_meeting":
            from koprogo_node.service_layer.tasks.summarize_meeting import SummarizeMeetingExecutor

            executors[task_type] = SummarizeMeetingExecutor(engine, model_sha256)
        elif task_type == "translate_document":
            from koprogo_node.service_layer.tasks.translate_document import TranslateDocumentExecutor

            executors[task_type] = TranslateDocumentExecutor(engine, model_sha256)
        elif task_type == "predict_expenses":
            from koprogo_node.adapters.tasks.forecaster import StatsmodelsExpenseForecaster
            from koprogo_node.service_layer.tasks.predict_expenses import PredictExpensesExecutor

            executors[task_type] = PredictExpensesExecutor(StatsmodelsExpenseForecaster())
    return executors


async def _until_stopped(stop: asyncio.Event, consumer: asyncio.Task[None]) -> None:
    """Wait for `stop`; a consumer that ends on its own is an error, not a quiet exit."""
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stopped, consumer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if consumer.done() and not stop.is_set():
        consumer.result()  # re-raises what killed it
        raise NodeError("the work consumer stopped: NATS connection closed")


async def _finish_in_flight(consumer: asyncio.Task[None], grace_s: float) -> None:
    """Let the consumer finish its current item (it stops fetching once `stop` is set).

    Past the grace period it is cancelled: the shared consumer NAKs the item, so
    another node takes it at once, and the engine stops generating at the next token.
    """
    if not consumer.done():
        await asyncio.wait({consumer}, timeout=grace_s)
    if not consumer.done():
        log.warning("abandoning the in-flight answer after %.1fs; it goes back to the queue", grace_s)
        consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
