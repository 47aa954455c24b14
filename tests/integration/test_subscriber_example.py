"""examples/subscribe_completed_chats.py against a real NATS JetStream: it prints a copro's completed chats."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

import nats

from koprogo_shared.events import ChatCompleted, ExecutionInfo, Usage, utc_now
from koprogo_shared.nats_connection import ensure_streams
from koprogo_shared.publishing import publish_event
from koprogo_shared.subjects import chat_completed, node_chat_completed

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "subscribe_completed_chats.py"


def completed_chat(copro_id: str, content: str) -> ChatCompleted:
    return ChatCompleted(
        source="tests/node",
        copro_id=copro_id,
        request_id=f"req-{content}",
        model="qwen2.5-0.5b",
        content=content,
        finish_reason="stop",
        usage=Usage(prompt_tokens=12, completion_tokens=30, total_tokens=42),
        execution_info=ExecutionInfo(
            execution_type="edge", node_id="pi-1", latency_ms=850.0, co2_grams=0.002, co2_saved_grams=0.01
        ),
    )


async def publish(nats_url: str, *chats: ChatCompleted) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js)
    for chat in chats:
        await publish_event(js, chat_completed(chat.copro_id), chat)
    await nc.close()


async def start_script(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_example_prints_a_copros_completed_chats_since_a_time(clean_jetstream: str) -> None:
    await publish(
        clean_jetstream, completed_chat("other-copro", "not-ours"), completed_chat("copro-a", "ours")
    )
    since = (utc_now() - timedelta(minutes=1)).isoformat()
    script = await start_script(
        "--copro", "copro-a", "--nats-url", clean_jetstream, "--since", since, "--max-messages", "1"
    )
    stdout, stderr = await asyncio.wait_for(script.communicate(), timeout=30)
    assert script.returncode == 0, stderr.decode()
    printed = stdout.decode()
    assert "request req-ours model qwen2.5-0.5b on edge node pi-1: 42 tokens" in printed
    assert printed.rstrip().endswith("  ours")
    assert "not-ours" not in printed


async def test_the_example_prints_what_a_keyed_node_published_on_its_own_subject(
    clean_jetstream: str,
) -> None:
    nc = await nats.connect(clean_jetstream)
    js = nc.jetstream()
    await ensure_streams(js)
    # A node with a NATS key publishes its answers on its own subject (issue 11, finding 5).
    await publish_event(js, node_chat_completed("copro-a", "pi-1"), completed_chat("copro-a", "keyed"))
    await nc.close()
    since = (utc_now() - timedelta(minutes=1)).isoformat()
    script = await start_script(
        "--copro", "copro-a", "--nats-url", clean_jetstream, "--since", since, "--max-messages", "1"
    )
    stdout, stderr = await asyncio.wait_for(script.communicate(), timeout=30)
    assert script.returncode == 0, stderr.decode()
    assert stdout.decode().rstrip().endswith("  keyed")


async def test_the_example_starts_from_now_without_since(clean_jetstream: str) -> None:
    await publish(clean_jetstream, completed_chat("copro-a", "before"))
    script = await start_script(
        "--copro", "copro-a", "--nats-url", clean_jetstream, "--max-messages", "1", "--json"
    )
    assert script.stderr is not None
    listening = await asyncio.wait_for(script.stderr.readline(), timeout=30)
    assert listening.decode().strip() == "listening on koprogo.events.chat.completed.> for copro copro-a"
    await publish(clean_jetstream, completed_chat("copro-a", "after"))
    stdout, stderr = await asyncio.wait_for(script.communicate(), timeout=30)
    assert script.returncode == 0, stderr.decode()
    (line,) = stdout.decode().splitlines()
    assert ChatCompleted.model_validate_json(line).request_id == "req-after"
