"""The grid scheduler on a real NATS: tasks reach polling nodes, a dead node's task moves on, a
restarted scheduler loses and duplicates nothing. Nodes run the real grid loop and worker with
executors that echo (the real executors have their own tests and the e2e suite)."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_node.service_layer.tasks.executor import TaskOutput, TaskRun
from koprogo_shared import subjects
from koprogo_shared.grid_stores import declare_grid_stores
from koprogo_shared.nats_connection import ensure_streams
from koprogo_shared.task_events import DocumentRef
from tests.conftest import wait_until
from tests.integration.grid_support import EchoExecutor, TaskEvents, grid_node, scheduler, submit


async def _ready(nats_url: str) -> tuple[NATS, JetStreamContext, TaskEvents]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js)
    await declare_grid_stores(js)
    return nc, js, await TaskEvents(nc).start()


async def test_tasks_submitted_on_the_stream_complete_on_a_polling_node_each_once(
    clean_jetstream: str,
) -> None:
    nc, js, events = await _ready(clean_jetstream)
    executor = EchoExecutor("predict_expenses")
    try:
        async with (
            scheduler(clean_jetstream),
            grid_node(clean_jetstream, "n1", {"predict_expenses": executor}),
        ):
            tasks = [await submit(js, horizon_months=i) for i in range(20)]
            for t in tasks:
                await wait_until(lambda t=t: events.done(t.id)(), timeout=30)
            for i, t in enumerate(tasks):
                [completed] = events.of(t.id, "completed")
                assert completed.result == {"echo": {"horizon_months": i}, "document_bytes": None}
                assert completed.node_id == "n1"
                assert [e.type.split(".")[2] for e in events.of(t.id)] == [
                    "submitted",
                    "assigned",
                    "started",
                    "result_reported",
                    "completed",
                ]
            assert executor.runs == 20
    finally:
        await nc.close()


async def test_a_node_killed_mid_task_loses_it_to_another_node(clean_jetstream: str) -> None:
    nc, js, events = await _ready(clean_jetstream)
    slow = EchoExecutor("ocr_invoice", seconds=60)
    quick = EchoExecutor("ocr_invoice")
    try:
        async with scheduler(clean_jetstream):
            async with grid_node(clean_jetstream, "doomed", {"ocr_invoice": slow}, interval_s=0.3) as dies:
                t = await submit(js, "ocr_invoice")
                await wait_until(lambda: bool(events.of(t.id, "started")), timeout=20)
                dies.set()  # no goodbye, no report
            async with grid_node(clean_jetstream, "survivor", {"ocr_invoice": quick}):
                await wait_until(events.done(t.id), timeout=30)
        [requeued] = events.of(t.id, "requeued")
        assert requeued.node_id == "doomed" and requeued.reason == "node_lost"
        [completed] = events.of(t.id, "completed")
        assert completed.node_id == "survivor" and completed.attempt == 2
    finally:
        await nc.close()


async def test_a_scheduler_restarted_mid_stream_loses_nothing_and_runs_nothing_twice(
    clean_jetstream: str,
) -> None:
    nc, js, events = await _ready(clean_jetstream)
    executors = {"translate_document": EchoExecutor("translate_document", seconds=0.05)}
    try:
        async with grid_node(clean_jetstream, "n1", executors), grid_node(clean_jetstream, "n2", executors):
            async with scheduler(clean_jetstream):
                first = [await submit(js, "translate_document", n=i) for i in range(15)]
                await asyncio.sleep(0.3)  # some done, some assigned, some queued
            # Submitted while no scheduler runs: they wait in the stream.
            second = [await submit(js, "translate_document", n=100 + i) for i in range(15)]
            async with scheduler(clean_jetstream):
                for t in first + second:
                    await wait_until(events.done(t.id), timeout=60)
        runs = executors["translate_document"].runs
        completed = Counter(e.task_id for _, e in events.events if e.type == "koprogo.task.completed.v1")
        assert set(completed) == {t.id for t in first + second}
        assert all(count == 1 for count in completed.values())
        # An attempt in flight when the scheduler stopped may be run again (its report waited in the
        # stream and was applied, or it was taken back): never more runs than assignments.
        assigned = [e for _, e in events.events if e.type == "koprogo.task.assigned.v1"]
        assert runs <= len(assigned)
    finally:
        await nc.close()


async def test_the_node_reads_the_document_and_the_scheduler_deletes_it_once_the_task_is_done(
    clean_jetstream: str,
) -> None:
    nc, js, events = await _ready(clean_jetstream)
    data = b"month,category,amount\n2024-01,chauffage,12.5\n"
    store = await js.object_store(subjects.DOCUMENTS_BUCKET)
    await store.put("doc-for-t", data)
    ref = DocumentRef(
        object_name="doc-for-t",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        content_type="text/csv",
    )
    try:
        async with (
            scheduler(clean_jetstream),
            grid_node(clean_jetstream, "n1", {"predict_expenses": EchoExecutor("predict_expenses")}),
        ):
            t = await submit(js, document=ref)
            await wait_until(events.done(t.id), timeout=30)
            [completed] = events.of(t.id, "completed")
            assert completed.result["document_bytes"] == len(data)

            async def deleted() -> bool:
                # The object's info, not its bytes: a read racing the delete would wait for chunks
                # that the delete has just purged.
                try:
                    await store.get_info("doc-for-t")
                except nats.js.errors.NotFoundError:  # ObjectNotFoundError, ObjectDeletedError
                    return True
                return False

            await wait_until(deleted, timeout=10)
    finally:
        await nc.close()


class _HugeResult(EchoExecutor):
    async def run(self, run: TaskRun) -> TaskOutput:
        return TaskOutput({"text": "x" * 9 * 1024 * 1024})  # over the servers' 8 MB max_payload


async def test_a_result_too_large_for_one_message_fails_the_task_once_and_says_why(
    clean_jetstream: str,
) -> None:
    nc, js, events = await _ready(clean_jetstream)
    try:
        async with (
            scheduler(clean_jetstream),
            grid_node(clean_jetstream, "n1", {"translate_document": _HugeResult("translate_document")}),
        ):
            t = await submit(js, "translate_document")
            await wait_until(events.done(t.id), timeout=30)
        [failed] = events.of(t.id, "failed")
        assert failed.error == "result_too_large" and "shorter document" in failed.message
        assert failed.attempts == 1
    finally:
        await nc.close()
