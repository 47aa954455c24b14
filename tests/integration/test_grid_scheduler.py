"""The grid scheduler on a real NATS: tasks reach polling nodes, a dead node's task moves on, a
restarted scheduler loses and duplicates nothing; assignments and reports are signed with real
nkeys, replicas of distinct nodes agree or a lazy node is caught, a forged report is refused.
Nodes run the real grid loop and worker with executors that echo (the real executors have their
own tests and the e2e suite). Tests of part 1's single-node flow run with GRID_QUORUM=1."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_grid.adapters.kv_store import KeyValueNodeStandingStore
from koprogo_node.service_layer.tasks.executor import TaskOutput, TaskRun
from koprogo_shared import subjects
from koprogo_shared.grid_signing import assignment_refusal, load_or_create_signer, sign_report
from koprogo_shared.grid_stores import declare_grid_stores
from koprogo_shared.nats_connection import ensure_streams
from koprogo_shared.publishing import publish_event
from koprogo_shared.task_events import (
    DocumentRef,
    GridPoll,
    GridPollReply,
    NodeTrustChanged,
    TaskResultReported,
    TaskUsage,
)
from tests.conftest import wait_until
from tests.integration.grid_support import (
    EchoExecutor,
    TaskEvents,
    declared_attestation,
    forget_grid_nodes,
    grid_node,
    heartbeat,
    node_signer,
    scheduler,
    submit,
)
from tests.unit.test_grid_scheduler import new_signer


async def _ready(nats_url: str) -> tuple[NATS, JetStreamContext, TaskEvents]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js)
    await forget_grid_nodes(js)
    await declare_grid_stores(js)
    return nc, js, await TaskEvents(nc).start()


async def test_tasks_submitted_on_the_stream_complete_on_a_polling_node_each_once(
    clean_jetstream: str,
) -> None:
    nc, js, events = await _ready(clean_jetstream)
    executor = EchoExecutor("predict_expenses")
    try:
        async with (
            scheduler(clean_jetstream, grid_quorum=1),
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
        async with scheduler(clean_jetstream, grid_quorum=1):
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
            scheduler(clean_jetstream, grid_quorum=1),
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


class _Forecast(EchoExecutor):
    """A forecast shaped as the comparator reads it: `horizon_months` points of `level` each."""

    def __init__(self, level: float = 100.0, seconds: float = 0.05) -> None:
        super().__init__("predict_expenses", seconds)
        self.level = level

    async def run(self, run: TaskRun) -> TaskOutput:
        await super().run(run)
        months = int(run.parameters.get("horizon_months", 1))
        points = [{"month": f"2025-{m + 1:02d}", "mean": self.level * (m + 1)} for m in range(months)]
        return TaskOutput({"categories": {"nettoyage": {"forecast": points}}, "total": points})


async def _trust_events(nc: NATS) -> list[NodeTrustChanged]:
    found: list[NodeTrustChanged] = []

    async def on(msg: Any) -> None:
        found.append(NodeTrustChanged.model_validate_json(msg.data))

    await nc.jetstream().subscribe(subjects.GRID_NODE_TRUST_ALL, cb=on, ordered_consumer=True)
    return found


async def test_replicas_of_two_owners_agree_and_a_lazy_node_is_caught_and_remembered(
    clean_jetstream: str,
) -> None:
    nc, js, events = await _ready(clean_jetstream)
    trust = await _trust_events(nc)
    honest = {"predict_expenses": _Forecast()}
    try:
        async with scheduler(clean_jetstream):
            async with (
                grid_node(clean_jetstream, "honest-1", honest),
                grid_node(clean_jetstream, "lazy", {"predict_expenses": _Forecast(level=0.0, seconds=0.01)}),
            ):
                tasks = [await submit(js, horizon_months=1 + i) for i in range(3)]
                # Each task went to both; they disagree: every task waits for a third owner.
                for t in tasks:
                    await wait_until(lambda t=t: len(events.of(t.id, "verifying")) == 2, timeout=30)
                assert not any(events.done(t.id)() for t in tasks)
                async with grid_node(clean_jetstream, "honest-2", {"predict_expenses": _Forecast()}):
                    for t in tasks:
                        await wait_until(events.done(t.id), timeout=30)
        for i, t in enumerate(tasks):
            [completed] = events.of(t.id, "completed")
            assert completed.result["total"][-1]["mean"] == 100.0 * (i + 1)
            v = completed.verification
            assert v.policy == "quorum" and v.outcome == "accepted" and v.agreement == 2
            verdicts = {r.node_id: r.verdict for r in v.replicas}
            assert verdicts == {"honest-1": "valid", "lazy": "invalid", "honest-2": "valid"}
            assert all(r.attestation is not None and r.co2_grams > 0 for r in v.replicas)
            assert completed.co2_grams == sum(r.co2_grams for r in v.replicas)
        await wait_until(lambda: len([e for e in trust if e.node_id == "lazy"]) == 3, timeout=10)
        assert {(e.reason, e.trusted) for e in trust if e.node_id == "lazy"} == {("caught_wrong", False)}
        # The trust book is stored: what a restarted scheduler reads back.
        standings = {
            s.node_id: s
            for s in await KeyValueNodeStandingStore(await js.key_value(subjects.GRID_NODES_BUCKET)).load()
        }
        assert standings["lazy"].invalid == 3 and standings["lazy"].validated == 0
        assert standings["honest-1"].validated == 3 and standings["honest-2"].validated == 3
        assert standings["lazy"].public_key == node_signer("lazy").public_key
    finally:
        await nc.close()


async def test_assignments_are_signed_and_a_report_signed_by_another_key_is_refused(
    clean_jetstream: str, tmp_path: Path
) -> None:
    nc, js, events = await _ready(clean_jetstream)
    trust = await _trust_events(nc)
    seed = tmp_path / "scheduler.nk"
    scheduler_key = load_or_create_signer(seed).public_key
    try:
        async with scheduler(clean_jetstream, grid_quorum=1, grid_signing_seed_file=seed):
            t = await submit(js, horizon_months=2)
            forger = new_signer()
            async with grid_node(
                clean_jetstream, "forger", {"predict_expenses": _Forecast()}, report_signer=forger
            ) as leaves:
                await wait_until(lambda: bool(events.of(t.id, "requeued")), timeout=30)
                leaves.set()
            [requeued] = events.of(t.id, "requeued")
            assert requeued.node_id == "forger" and requeued.reason == "refused"
            assert "signed_by_another_key" in requeued.message
            # A node that announces no key gets no work (its reports could only be refused).
            keyless = heartbeat("keyless", ["predict_expenses"])
            await nc.publish(subjects.node_heartbeat("keyless"), keyless.model_dump_json().encode())
            await asyncio.sleep(0.3)
            ask = GridPoll(node_id="keyless", task_types=["predict_expenses"], wait_s=0)
            refused = await nc.request(
                subjects.grid_poll("keyless"), ask.model_dump_json().encode(), timeout=10
            )
            assert GridPollReply.model_validate_json(refused.data).reason == "no_public_key"
            # A node of our own takes the task again: its assignment is signed by the scheduler,
            # for this node, over this input.
            beat = heartbeat("manual", ["predict_expenses"], public_key=node_signer("manual").public_key)
            await nc.publish(subjects.node_heartbeat("manual"), beat.model_dump_json().encode())
            await asyncio.sleep(0.3)
            poll = GridPoll(node_id="manual", task_types=["predict_expenses"], wait_s=5)
            reply = GridPollReply.model_validate_json(
                (
                    await nc.request(
                        subjects.grid_poll("manual"), poll.model_dump_json().encode(), timeout=10
                    )
                ).data
            )
            given = reply.assignment
            assert given is not None and given.task_id == t.id and given.attempt == 2
            assert assignment_refusal(given, "manual", scheduler_key) is None
            tampered = given.model_copy(update={"parameters": {"horizon_months": 12}})
            assert assignment_refusal(tampered, "manual", scheduler_key) == "input_digest_mismatch"
            assert assignment_refusal(given, "forger", scheduler_key) == "assignment_for_another_node"
            # Its signed report completes the task.
            report = TaskResultReported(
                source="test/manual",
                copro_id=given.copro_id,
                task_id=given.task_id,
                attempt=given.attempt,
                node_id="manual",
                outcome="completed",
                result={"total": [{"month": "2025-01", "mean": 1.0}]},
                usage=TaskUsage(duration_s=1.0),
                attestation=declared_attestation(1.0),
            )
            signed = sign_report(node_signer("manual"), report, given)
            await publish_event(
                js, subjects.node_task_event("result_reported", given.copro_id, "manual"), signed
            )
            await wait_until(events.done(t.id), timeout=30)
        [completed] = events.of(t.id, "completed")
        assert completed.node_id == "manual" and completed.verification.replicas[0].verdict == "refused"
        await wait_until(lambda: any(e.node_id == "forger" for e in trust), timeout=10)
        [bad] = [e for e in trust if e.node_id == "forger"]
        assert bad.reason == "bad_signature" and bad.task_id == t.id
    finally:
        await nc.close()


async def test_trust_earned_and_keys_pinned_survive_a_scheduler_restart(clean_jetstream: str) -> None:
    nc, js, events = await _ready(clean_jetstream)
    trust = await _trust_events(nc)
    settings = {"grid_trust_after": 1, "grid_spot_check_rate": 0.0}
    try:
        async with scheduler(clean_jetstream, **settings):
            async with (
                grid_node(clean_jetstream, "h1", {"predict_expenses": _Forecast()}),
                grid_node(clean_jetstream, "h2", {"predict_expenses": _Forecast()}),
            ):
                first = await submit(js, horizon_months=1)
                await wait_until(events.done(first.id), timeout=30)
        assert events.of(first.id, "completed")[0].verification.policy == "quorum"
        await wait_until(lambda: len(trust) == 2, timeout=10)
        assert {(e.node_id, e.reason, e.trusted) for e in trust} == {
            ("h1", "earned", True),
            ("h2", "earned", True),
        }
        async with scheduler(clean_jetstream, **settings):
            # Another key announced for h1 is refused: its first key is pinned in the stored book.
            impostor = new_signer()
            async with grid_node(clean_jetstream, "h1", {"predict_expenses": _Forecast()}, signer=impostor):
                second = await submit(js, horizon_months=2)
                await asyncio.sleep(2)
                assert not events.of(second.id, "assigned")
            async with grid_node(clean_jetstream, "h1", {"predict_expenses": _Forecast()}):
                await wait_until(events.done(second.id), timeout=30)
        [completed] = events.of(second.id, "completed")
        v = completed.verification
        assert v.policy == "trusted" and v.outcome == "accepted_unchecked"
        assert [(r.node_id, r.verdict, r.trusted) for r in v.replicas] == [("h1", "unchecked", True)]
    finally:
        await nc.close()


async def test_a_lone_owner_s_result_is_accepted_unchecked_once_the_owner_wait_passed(
    clean_jetstream: str,
) -> None:
    """GRID_QUORUM 2 on a stack with one owner (`make up` alone): no other owner's node ever
    heartbeats, so after GRID_OWNER_WAIT_S the result is taken alone, unchecked, and earns no trust."""
    nc, js, events = await _ready(clean_jetstream)
    trust = await _trust_events(nc)
    executor = EchoExecutor("ocr_invoice")
    try:
        async with (
            scheduler(clean_jetstream, grid_owner_wait_s=2.0, grid_trust_after=1),
            grid_node(clean_jetstream, "local", {"ocr_invoice": executor}),
        ):
            t = await submit(js, "ocr_invoice", page=1)
            await wait_until(lambda: bool(events.of(t.id, "result_reported")), timeout=20)
            reported_at = asyncio.get_running_loop().time()
            await wait_until(events.done(t.id), timeout=20)
            waited = asyncio.get_running_loop().time() - reported_at
        [completed] = events.of(t.id, "completed")
        v = completed.verification
        assert completed.result == {"echo": {"page": 1}, "document_bytes": None}
        assert v is not None and v.outcome == "accepted_unchecked" and v.policy == "quorum"
        assert v.quorum == 1 and v.note is not None and "owners_short" in v.note
        assert [(r.node_id, r.verdict, r.trusted) for r in v.replicas] == [("local", "unchecked", False)]
        assert [e.type.split(".")[2] for e in events.of(t.id)] == [
            "submitted",
            "assigned",
            "started",
            "result_reported",
            "verifying",  # within the grace a second owner might still have come
            "completed",
        ]
        assert waited > 0.5  # decided by the tick once the grace passed, not at the report
        assert executor.runs == 1
        # Trust after one valid result, yet nothing earned: an unchecked result is not a valid one.
        kv = await js.key_value(subjects.GRID_NODES_BUCKET)
        standing = await KeyValueNodeStandingStore(kv).load()
        assert [(s.node_id, s.trusted, s.validated) for s in standing] == [("local", False, 0)]
        assert trust == []
    finally:
        await nc.close()
