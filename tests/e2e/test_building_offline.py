"""Issue 18 end to end: a hub and a copro's building started as docs/deploy.md says, the line cut.

`koprogo building add` at the hub makes the building's folder; the hub starts with its leaf
listener, the building with `koprogo up --site building --hub`, its leaf link going through a TCP
proxy that the test cuts (the building's internet line). Both stacks are real processes: embedded
nats-servers, the hub's PostgreSQL and ledger, llama.cpp with the bundled model in both; the hub's
cloud deployment is an OpenAI-compatible provider served by the test (the boundary we cannot reach).

Online, the building answers from its own edge node and sends cloud chats to the hub; cut, it
keeps answering from its edge node and says `503 offline` at once for the cloud; back online, the
hub's ledger counts every answer the building gave, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
from nats.js.api import DeliverPolicy

from koprogo_cli.instance import running_stack
from koprogo_cli.ports import free_port
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import postgres_dir, wait_until
from tests.integration.cloud_support import FakeChatCompletionsApi, serving_in_thread
from tests.integration.leaf_support import TcpProxy

COPRO = "c1"
CLOUD_MODEL = "gpt-4o-mini"
CATCH_UP_S = 120.0


async def koprogo(*args: str, env: dict[str, str], timeout: float = 400) -> str:
    """Run the CLI as a user would; its stdout (the test fails on a non-zero exit)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "koprogo_cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"koprogo {' '.join(args)}: {out.decode()}\n{err.decode()}"
    return out.decode()


def chat_body(model: str, n: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Bonjour, question {n} sur le PV."}],
        "context": f"copro:{COPRO}",
        "max_tokens": 8,
    }


async def chat(client: httpx.AsyncClient, url: str, token: str, model: str, n: int) -> httpx.Response:
    return await client.post(
        f"{url}/mcp/v1/chat", json=chat_body(model, n), headers={"Authorization": f"Bearer {token}"}
    )


async def hub_link(client: httpx.AsyncClient, url: str) -> str:
    return str((await client.get(f"{url}/mcp/v1/site")).json()["hub_link"])


async def test_a_building_answers_through_a_cut_line_and_the_hub_counts_every_answer_once() -> None:
    with postgres_dir() as folder:
        await _building_through_a_cut(folder)


async def _building_through_a_cut(folder: Path) -> None:
    hub_dir, building_dir = folder / "hub", folder / "building"
    provider = FakeChatCompletionsApi()
    with serving_in_thread(provider.app()) as provider_port:
        deployments = folder / "deployments.toml"
        deployments.write_text(
            f"""[[deployments]]
id = "hub-cloud"
provider = "openai_compatible"
base_url = "http://127.0.0.1:{provider_port}/v1"
api_key_env = ""
models = {{ "{CLOUD_MODEL}" = "{CLOUD_MODEL}" }}
"""
        )
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in ("NATS_URL", "DATABASE_URL", "JWT_SECRET", "JWT_SECRET_FILE", "JWKS_URL")
            and not name.startswith(("CONTENT_KEY", "OTEL_"))
        } | {"CLOUD_DEPLOYMENTS_FILE": str(deployments)}
        hub_port, building_port, leaf_port = free_port(), free_port(), free_port()
        hub_url, building_url = f"http://127.0.0.1:{hub_port}", f"http://127.0.0.1:{building_port}"
        line = TcpProxy(leaf_port)
        await line.restore()
        started: list[Path] = []
        try:
            await koprogo(
                "building",
                "add",
                "--copro",
                COPRO,
                "--out",
                str(building_dir),
                "--data-dir",
                str(hub_dir),
                env=env,
            )
            await koprogo(
                "up", "--detach", "--no-demo", "--data-dir", str(hub_dir), "--port", str(hub_port),
                "--leaf-port", str(leaf_port), env=env,
            )  # fmt: skip
            started.append(hub_dir)
            building_up = (
                "up", "--detach", "--no-demo", "--site", "building",
                "--hub", f"nats-leaf://127.0.0.1:{line.port}",
                "--data-dir", str(building_dir), "--port", str(building_port),
            )  # fmt: skip
            await koprogo(*building_up, env=env)
            started.append(building_dir)
            # Each side signs its own members' tokens: a building taken apart signs nothing the hub takes.
            token = (
                await koprogo(
                    "token", "--data-dir", str(building_dir), "--user", "alice", "--copro", COPRO, env=env
                )
            ).strip()
            hub_token = (
                await koprogo(
                    "token", "--data-dir", str(hub_dir), "--user", "alice", "--copro", COPRO, env=env
                )
            ).strip()
            assert (await _stats(hub_url, token)).status_code == 401, "the hub took a building's token"

            async def restart_building() -> None:
                await koprogo(*building_up, env=env)

            await _serve_and_check(
                hub_dir, building_dir, hub_url, building_url, token, hub_token, line, restart_building
            )
        finally:
            for data_dir in reversed(started):
                await koprogo("down", "--data-dir", str(data_dir), env=env, timeout=120)
            await line.cut()


async def _serve_and_check(
    hub_dir: Path,
    building_dir: Path,
    hub_url: str,
    building_url: str,
    token: str,
    hub_token: str,
    line: TcpProxy,
    restart: Callable[[], Awaitable[None]],
) -> None:
    async with httpx.AsyncClient(timeout=150) as client:
        await wait_until(lambda: _is(hub_link(client, building_url), "up"), timeout=30, interval=0.5)
        answered: list[str] = []

        # Online: the building's own edge node, and the hub's cloud for a cloud model.
        for n in range(3):
            reply = await chat(client, building_url, token, BUNDLED_MODEL_ID, n)
            assert reply.status_code == 200, reply.text
            assert reply.json()["execution_info"]["execution_type"] == "edge"
            answered.append(reply.json()["id"])
        reply = await chat(client, building_url, token, CLOUD_MODEL, 3)
        assert reply.status_code == 200, reply.text
        assert reply.json()["execution_info"]["execution_type"] == "cloud"
        answered.append(reply.json()["id"])

        # Another copro's chat at this building would never reach the hub: refused.
        other = await client.post(
            f"{building_url}/mcp/v1/chat",
            json=chat_body(BUNDLED_MODEL_ID, 9) | {"context": "copro:c2"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert other.status_code == 403, other.text

        # The line is cut: the building still answers from its edge node; the cloud fails fast,
        # at once while its router still hears the hub's last cloud heartbeats (its publish finds
        # no stream), and after they stopped (refused before trying).
        await line.cut()
        started = time.monotonic()
        refused = await chat(client, building_url, token, CLOUD_MODEL, 4)
        assert (refused.status_code, refused.json()["error"]) == (503, "offline"), refused.text
        assert time.monotonic() - started < 5.0, "the cloud request did not fail fast"
        await wait_until(lambda: _is(hub_link(client, building_url), "down"), timeout=30, interval=0.5)
        for n in range(10, 15):
            reply = await chat(client, building_url, token, BUNDLED_MODEL_ID, n)
            assert reply.status_code == 200, reply.text
            answered.append(reply.json()["id"])
        # The Pi loses power during the cut (every process of the building SIGKILLed, as one does
        # not flush) and starts again, still cut off: what it acknowledged is on its disk.
        await power_cut_and_restart(building_dir, restart)
        await wait_until(lambda: _is(hub_link(client, building_url), "down"), timeout=60, interval=0.5)
        for n in range(20, 22):
            reply = await chat(client, building_url, token, BUNDLED_MODEL_ID, n)
            assert reply.status_code == 200, reply.text
            answered.append(reply.json()["id"])
        started = time.monotonic()
        refused = await chat(client, building_url, token, CLOUD_MODEL, 15)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "offline", refused.text
        assert time.monotonic() - started < 5.0, "the cloud request did not fail fast"
        # Statistics are the hub's: the building says where, rather than answer zeros.
        stats_here = await client.get(
            f"{building_url}/mcp/v1/stats", params={"context": f"copro:{COPRO}"},
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
        assert stats_here.status_code == 503, stats_here.text
        # So is a member's data: an erasure asked here would never reach the hub's ledger.
        erasure = await client.delete(
            f"{building_url}/mcp/v1/users/alice/data", headers={"Authorization": f"Bearer {token}"}
        )
        assert (erasure.status_code, erasure.json()["error"]) == (503, "data_unavailable"), erasure.text

        # Back online: every answer given in the building reaches the hub's ledger, once.
        await line.restore()

        async def hub_counts_all() -> bool:
            stats = await _hub_stats(client, hub_url, hub_token)
            return int(stats["total_requests"]) >= len(answered)

        await wait_until(hub_counts_all, timeout=CATCH_UP_S, interval=1.0)
        await asyncio.sleep(3)  # nothing more trickles in
        stats = await _hub_stats(client, hub_url, hub_token)
        assert (stats["total_requests"], stats["edge_requests"], stats["cloud_requests"]) == (11, 10, 1), (
            stats
        )
        assert await hub_link(client, building_url) == "up"
        # The hub's router left the building's requests alone (they were routed in the building):
        # one answer per request in the hub's audit log, none from the hub's own edge node.
        requests = await _answers_at_hub(hub_dir)
        assert len(requests) == len(set(requests)) == len(answered), requests


async def power_cut_and_restart(building_dir: Path, restart: Callable[[], Awaitable[None]]) -> None:
    record = running_stack(building_dir)
    assert record is not None and record.pid > 0
    for pid in [record.pid, *record.children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pids = [record.pid, *record.children]
    await wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=30, interval=0.1)
    await restart()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone (the stack's processes are not our children).
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


async def _answers_at_hub(hub_dir: Path) -> list[str]:
    """The request ids of the completions in the hub's KOPROGO_EVENTS for the copro."""
    record = running_stack(hub_dir)
    assert record is not None
    nc = await nats.connect(record.nats_url, nkeys_seed=str(hub_dir / "secrets" / "nats" / "admin.nk"))
    try:
        js = nc.jetstream(timeout=10)
        found: list[str] = []
        sub = await js.subscribe(
            f"koprogo.events.chat.completed.{COPRO}.>",
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        sub_plain = await js.subscribe(
            f"koprogo.events.chat.completed.{COPRO}", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        for each in (sub, sub_plain):
            while True:
                try:
                    msg = await each.next_msg(timeout=2)
                except nats.errors.TimeoutError:
                    break
                found.append(json.loads(msg.data)["request_id"])
            await each.unsubscribe()
        return found
    finally:
        await nc.close()


async def _stats(url: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(
            f"{url}/mcp/v1/stats",
            params={"context": f"copro:{COPRO}"},
            headers={"Authorization": f"Bearer {token}"},
        )


async def _hub_stats(client: httpx.AsyncClient, hub_url: str, token: str) -> dict[str, Any]:
    reply = await client.get(
        f"{hub_url}/mcp/v1/stats",
        params={"context": f"copro:{COPRO}"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def _is(value: Any, wanted: str) -> bool:
    return bool(await value == wanted)
