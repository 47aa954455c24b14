"""The edge node against a real NATS JetStream and real llama.cpp with the bundled SmolLM2."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable
from pathlib import Path

import httpx
import jinja2
import pytest
from llama_cpp import Llama
from llama_cpp._internals import LlamaSampler
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_cli.ports import free_port
from koprogo_node.adapters.inference import FakeInferenceEngine
from koprogo_node.adapters.llama_engine import LlamaEngine
from koprogo_node.domain.controls import Sampling
from koprogo_node.domain.errors import ContextOverflowError
from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatFailed, ChatMessage, NodeHeartbeat, RunInference
from koprogo_shared.grid_signing import load_or_create_signer
from koprogo_shared.grid_stores import ensure_documents_store
from koprogo_shared.publishing import publish_event
from tests.conftest import wait_until
from tests.integration.edge_support import (
    MODEL,
    listening,
    nats_client,
    node_process,
    node_settings,
    pulling_nodes,
    reply_subject,
    run_inference,
    running_node,
    work_left,
)

pytestmark = pytest.mark.integration

LONG_STORY = "Write a very long story about a cat, at least 2000 words."


async def test_the_llama_engine_answers_in_french_with_counts_from_the_tokenizer(
    bundled_model_path: Path,
) -> None:
    messages = [
        ChatMessage(role="system", content="Tu es l'assistant d'une copropriété. Réponds en français."),
        ChatMessage(role="user", content="Bonjour ! Qu'est-ce qu'un syndic de copropriété ?"),
    ]
    engine = LlamaEngine(bundled_model_path, n_ctx=2048)
    await engine.load()
    try:
        counted = await engine.count_tokens(messages)
        # Greedy: the same answer every run, so the re-tokenising tolerance below is not a lottery
        # (sampled at 0.7, an answer of odd word pieces once re-tokenised 4 tokens shorter).
        result = await engine.chat(messages, Sampling(0.0), 64)
    finally:
        await engine.close()

    # Independently: the GGUF's own template, rendered, then the model's tokenizer.
    vocab = Llama(model_path=str(bundled_model_path), vocab_only=True, verbose=False)
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(
        vocab.metadata["tokenizer.chat_template"]
    )
    prompt = template.render(messages=[m.model_dump() for m in messages], add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nTu es l'assistant")
    expected_prompt_tokens = len(vocab.tokenize(prompt.encode(), add_bos=False, special=True))

    assert result.content.strip()
    assert result.prompt_tokens == counted == expected_prompt_tokens
    assert result.prompt_tokens != len(prompt) // 4
    assert 0 < result.completion_tokens <= 64
    answer_tokens = len(vocab.tokenize(result.content.encode(), add_bos=False, special=False))
    assert abs(result.completion_tokens - answer_tokens) <= 2  # re-tokenising text may merge a piece
    assert result.finish_reason in ("stop", "length")
    assert (result.finish_reason == "length") == (result.completion_tokens == 64)


async def test_a_prompt_longer_than_the_context_is_a_domain_error_not_a_crash(
    bundled_model_path: Path,
) -> None:
    engine = LlamaEngine(bundled_model_path, n_ctx=256)
    await engine.load()
    try:
        with pytest.raises(ContextOverflowError) as caught:
            await engine.chat([ChatMessage(role="user", content="copropriété " * 300)], Sampling(0.7), None)
        # The engine is still usable afterwards.
        after = await engine.chat([ChatMessage(role="user", content="Bonjour")], Sampling(0.7), 8)
    finally:
        await engine.close()
    assert caught.value.n_ctx == 256 and caught.value.prompt_tokens > 256
    assert after.completion_tokens > 0


async def test_each_generation_frees_its_native_sampler_when_it_ends(bundled_model_path: Path) -> None:
    # llama-cpp-python's sampler is a reference cycle: left to Python's collector, the edge node
    # kept one native sampler chain per chat until a rare full collection (its RSS grew by MiBs an
    # hour). With the collector off, none may be left holding its chain after the chats end.
    engine = LlamaEngine(bundled_model_path, n_ctx=512)
    await engine.load()
    gc.collect()
    gc.disable()
    try:
        await engine.chat([ChatMessage(role="user", content="Bonjour")], Sampling(0.7), 4)
        await engine.chat([ChatMessage(role="user", content="Un syndic ?")], Sampling(0.0), 4)
        pieces: list[str] = []
        await engine.chat(
            [ChatMessage(role="user", content="Merci")], Sampling(0.7), 4, on_delta=pieces.append
        )
        holding = [o for o in gc.get_objects() if isinstance(o, LlamaSampler) and o.sampler is not None]
    finally:
        gc.enable()
        await engine.close()
    assert holding == []


async def test_a_run_inference_is_answered_on_the_reply_subject_and_in_the_event_log(
    clean_jetstream: str,
) -> None:
    port = free_port()
    async with nats_client(clean_jetstream) as (nc, js):
        reply = reply_subject()
        settings = node_settings(clean_jetstream, "edge-a", ops_port=port)
        async with listening(nc, reply, "outcome") as replies, running_node(settings):
            cmd = run_inference("Bonjour ! Présente-toi en une phrase.", reply_subject=reply, max_tokens=48)
            await publish_event(js, subjects.run_inference_edge(MODEL), cmd)

            outcome = await replies.next(60)
            assert isinstance(outcome, ChatCompleted)
            assert (outcome.request_id, outcome.copro_id, outcome.model) == (
                cmd.request_id,
                "copro-edge",
                MODEL,
            )
            assert outcome.content.strip() and 0 < outcome.usage.completion_tokens <= 48
            assert outcome.execution_info.execution_type == "edge"
            assert outcome.execution_info.node_id == "edge-a"
            assert outcome.execution_info.latency_ms > 0 and outcome.execution_info.co2_grams > 0

            stored = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.chat_completed("copro-edge"))
            assert ChatCompleted.model_validate_json(stored.data or b"") == outcome
            assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == outcome.id
            await wait_until(lambda: _is_zero(work_left(js)))  # acked: gone from the work queue

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                models = (await http.get("/mcp/v1/models")).json()
                ready = await http.get("/ready")
                metrics = (await http.get("/metrics")).text
    assert models == {
        "models": [
            {
                "id": MODEL,
                "name": "SmolLM2 135M Instruct Q4",
                "provider": "local",
                "context_length": 8192,
                "is_available": True,
                "edge_compatible": True,
            }
        ]
    }
    assert ready.status_code == 200 and ready.json()["checks"] == {"nats": True, "model": True}
    assert f'koprogo_node_requests_total{{model="{MODEL}",outcome="completed"}}' in metrics
    assert "koprogo_node_inference_seconds_bucket" in metrics


async def test_an_expired_deadline_fails_with_504_without_running_the_model(clean_jetstream: str) -> None:
    engine = FakeInferenceEngine()
    async with nats_client(clean_jetstream) as (nc, js):
        reply = reply_subject()
        async with (
            listening(nc, reply, "outcome") as replies,
            running_node(node_settings(clean_jetstream, "edge-late"), engine=engine),
        ):
            cmd = run_inference("Trop tard", reply_subject=reply, deadline_s=-1)
            await publish_event(js, subjects.run_inference_edge(MODEL), cmd)
            outcome = await replies.next(10)
            stored = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.chat_failed("copro-edge"))
    assert isinstance(outcome, ChatFailed)
    assert (outcome.status, outcome.error, outcome.request_id) == (504, "deadline_exceeded", cmd.request_id)
    assert ChatFailed.model_validate_json(stored.data or b"") == outcome
    assert engine.calls == []


async def test_a_node_heartbeats_right_after_connecting_and_every_interval(clean_jetstream: str) -> None:
    settings = node_settings(
        clean_jetstream, "edge-hb", heartbeat_interval_s=0.2, power_watts=5.5, intensity_g_per_kwh=40
    )
    async with nats_client(clean_jetstream) as (nc, _):
        async with (
            listening(nc, subjects.node_heartbeat("edge-hb"), "heartbeat") as beats,
            running_node(settings),
        ):
            first: NodeHeartbeat = await beats.next(30)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(3):
                await beats.next(2)
            elapsed = loop.time() - started
    assert (first.node_id, first.models, first.in_flight, first.capacity) == ("edge-hb", [MODEL], 0, 1)
    assert (first.power_watts, first.intensity_g_per_kwh, first.renewable_attested) == (5.5, 40, False)
    assert first.interval_s == 0.2 and first.tokens_per_second == 0.0
    assert 0.3 < elapsed < 1.5  # 0.6 s nominal; the first beat may be read late


async def test_a_grid_node_announces_the_key_its_reports_are_signed_with(
    clean_jetstream: str, tmp_path: Path
) -> None:
    seed_file = tmp_path / "grid-node.nk"
    settings = node_settings(
        clean_jetstream,
        "edge-grid-key",
        heartbeat_interval_s=0.2,
        grid_enabled=True,
        grid_task_types=["predict_expenses"],
        grid_signing_seed_file=seed_file,
    )
    chat_only = node_settings(clean_jetstream, "edge-chat-only", heartbeat_interval_s=0.2)
    async with nats_client(clean_jetstream) as (nc, js):
        await ensure_documents_store(js)  # a grid node waits for the store it reads documents from
        async with (
            listening(nc, subjects.node_heartbeat("edge-grid-key"), "heartbeat") as grid_beats,
            listening(nc, subjects.node_heartbeat("edge-chat-only"), "heartbeat") as chat_beats,
            running_node(settings, FakeInferenceEngine()),
            running_node(chat_only, FakeInferenceEngine()),
        ):
            beat: NodeHeartbeat = await grid_beats.next(30)
            chat_beat: NodeHeartbeat = await chat_beats.next(30)
    # The key minted on first start, in the file named, is the one announced.
    assert beat.public_key == load_or_create_signer(seed_file).public_key
    assert beat.public_key is not None and beat.public_key.startswith("U")
    assert beat.task_types == ["predict_expenses"]
    assert chat_beat.public_key is None and chat_beat.task_types == []


async def test_a_node_answers_an_announce_at_once_and_reports_its_measured_speed(
    clean_jetstream: str,
) -> None:
    settings = node_settings(clean_jetstream, "edge-ann", heartbeat_interval_s=60)
    async with nats_client(clean_jetstream) as (nc, js):
        reply = reply_subject()
        async with (
            listening(nc, subjects.node_heartbeat("edge-ann"), "heartbeat") as beats,
            listening(nc, reply, "outcome") as replies,
            running_node(settings),
        ):
            await beats.next(30)  # the one right after connecting
            await publish_event(
                js,
                subjects.run_inference_edge(MODEL),
                run_inference("Bonjour", reply_subject=reply, max_tokens=16),
            )
            await replies.next(60)
            await nc.publish(subjects.NODES_ANNOUNCE, b"")
            answer: NodeHeartbeat = await beats.next(2)  # far sooner than the 60 s interval
    assert answer.node_id == "edge-ann" and answer.in_flight == 0
    assert answer.tokens_per_second > 0


async def test_two_nodes_on_the_same_model_share_the_load(clean_jetstream: str) -> None:
    async with nats_client(clean_jetstream) as (nc, js):
        reply = reply_subject()
        async with (
            listening(nc, reply, "outcome") as replies,
            running_node(node_settings(clean_jetstream, "edge-1")),
            running_node(node_settings(clean_jetstream, "edge-2")),
        ):
            await wait_until(lambda: _at_least(pulling_nodes(js), 2), timeout=30)
            commands = [
                run_inference(f"Question {i} : qu'est-ce qu'un syndic ?", reply_subject=reply, max_tokens=32)
                for i in range(8)
            ]
            for cmd in commands:
                await publish_event(js, subjects.run_inference_edge(MODEL), cmd)
            outcomes = [await replies.next(120) for _ in commands]
    assert all(isinstance(o, ChatCompleted) for o in outcomes)
    assert {o.request_id for o in outcomes} == {c.request_id for c in commands}
    served_by = [o.execution_info.node_id for o in outcomes if isinstance(o, ChatCompleted)]
    assert set(served_by) == {"edge-1", "edge-2"}, served_by


async def test_a_node_killed_mid_answer_has_its_work_answered_by_another_node(
    clean_jetstream: str, tmp_path: Path
) -> None:
    async with nats_client(clean_jetstream) as (nc, js):
        reply = reply_subject()
        async with listening(nc, reply, "outcome") as replies:
            async with node_process(clean_jetstream, "edge-doomed", tmp_path, ACK_WAIT_S="2") as proc:
                await _wait_generating(
                    nc,
                    js,
                    "edge-doomed",
                    proc,
                    run_inference(LONG_STORY, reply_subject=reply, max_tokens=300),
                )
                proc.kill()
                await proc.wait()
            assert replies.items.empty()  # the dead node never answered

            async with running_node(node_settings(clean_jetstream, "edge-rescuer", ack_wait_s=2)):
                outcome = await replies.next(90)
                await asyncio.sleep(0.5)
                assert replies.items.empty()  # answered once
    assert isinstance(outcome, ChatCompleted)
    assert outcome.execution_info.node_id == "edge-rescuer"


async def test_sigterm_mid_answer_stops_cleanly_and_hands_the_work_back_at_once(
    clean_jetstream: str, tmp_path: Path
) -> None:
    # ack_wait is 30 s: an answer from the second node sooner than that means the
    # stopping node NAKed the item instead of letting it time out.
    async with nats_client(clean_jetstream) as (nc, js):
        reply = reply_subject()
        async with listening(nc, reply, "outcome") as replies:
            env = {"ACK_WAIT_S": "30", "SHUTDOWN_GRACE_S": "0"}
            async with node_process(clean_jetstream, "edge-leaving", tmp_path, free_port(), **env) as proc:
                await _wait_generating(
                    nc,
                    js,
                    "edge-leaving",
                    proc,
                    run_inference(LONG_STORY, reply_subject=reply, max_tokens=300),
                )
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), timeout=15)
            assert code == 0, (tmp_path / "edge-leaving.log").read_text()

            loop = asyncio.get_running_loop()
            started = loop.time()
            async with running_node(node_settings(clean_jetstream, "edge-staying", ack_wait_s=30)):
                outcome = await replies.next(25)
            assert loop.time() - started < 25
    assert isinstance(outcome, ChatCompleted)
    assert outcome.execution_info.node_id == "edge-staying"


async def test_a_node_waiting_for_nats_is_not_ready_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    unreachable = f"nats://127.0.0.1:{free_port()}"
    async with node_process(unreachable, "edge-alone", tmp_path, port) as proc:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def model_loaded() -> bool:
                try:
                    return (await http.get("/ready")).json()["checks"]["model"] is True
                except httpx.TransportError:
                    return False

            await wait_until(model_loaded, timeout=30)
            ready = await http.get("/ready")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=10)
    assert ready.status_code == 503 and ready.json()["checks"] == {"nats": False, "model": True}
    assert code == 0, (tmp_path / "edge-alone.log").read_text()


async def _wait_generating(
    nc: NATS, js: JetStreamContext, node_id: str, proc: asyncio.subprocess.Process, cmd: RunInference
) -> None:
    """Send `cmd` once the node process pulls work, and return when its heartbeat says it is generating."""
    async with listening(nc, subjects.node_heartbeat(node_id), "heartbeat") as beats:
        await wait_until(lambda: _at_least(pulling_nodes(js), 1), timeout=60)
        await publish_event(js, subjects.run_inference_edge(MODEL), cmd)

        async def generating() -> bool:
            assert proc.returncode is None, f"the node process exited with {proc.returncode}"
            await nc.publish(subjects.NODES_ANNOUNCE, b"")
            try:
                beat: NodeHeartbeat = await beats.next(1)
            except TimeoutError:
                return False
            return beat.in_flight == 1

        await wait_until(generating, timeout=30, interval=0.02)


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def _at_least(count: Awaitable[int], wanted: int) -> bool:
    return await count >= wanted
