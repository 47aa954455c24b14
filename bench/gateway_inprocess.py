"""Benchmark: the gateway's own CPU per chat in one process, without NATS (issue 17).

    .venv/bin/python bench/gateway_inprocess.py [--requests 5000] [--profile out.prof]
    PYTHONPATH=<other revision's services/gateway/src> .venv/bin/python bench/gateway_inprocess.py

The gateway's real app (`create_app`: middlewares, routing, dependencies, the OpenAI route, the
chat use case, the token verifier with an HS256 secret) answers `POST /v1/chat/completions` with
`peer_proxy.lua`'s body, called as an ASGI app one request at a time: no server, no sockets. Its
chat bus is `FakeChatBus` (the answer comes at once) and its counters `FakeCounterStore`, so what
is measured is the gateway's Python work per chat, without the NATS I/O that `gateway_cpu.py`
includes; the process CPU time is far steadier on a shared machine than a whole stack's.
Logging goes to a file at INFO, as under `koprogo up`. `--profile` writes a cProfile of the measured requests (`python -m pstats`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.token_support

from koprogo_gateway.adapters.chat_bus import FakeChatBus
from koprogo_gateway.adapters.jwt_verifier import JwtVerifier
from koprogo_gateway.adapters.rate_limit_store import FakeCounterStore
from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.entrypoints.http.app import create_app
from koprogo_gateway.local_tokens import mint_token
from koprogo_gateway.service_layer.admission import ChatAdmission
from koprogo_gateway.service_layer.chat import ChatService
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_gateway.settings import GatewaySettings
from koprogo_shared.events import ChatCompleted, ChatRequested, ExecutionInfo, Usage
from koprogo_shared.logging_setup import configure_logging
from koprogo_shared.node_registry import NodeRegistry
from tests.token_support import AUDIENCE, AUTH_SETTINGS, ISSUER, SECRET

COPRO = "00000000-0000-4000-8000-00000000de00"
BODY = (
    (Path(__file__).resolve().parent / "peer_proxy.lua")
    .read_text()
    .split("wrk.body = '")[1]
    .split("'\n")[0]
    .replace("\\'", "'")
    .encode()
)


def completed(request: ChatRequested) -> list[ChatCompleted]:
    return [
        ChatCompleted(
            source="bench",
            copro_id=request.copro_id,
            request_id=request.id,
            model=request.model,
            content="Le PV approuve les comptes.",
            finish_reason="stop",
            usage=Usage(prompt_tokens=30, completion_tokens=8, total_tokens=38),
            execution_info=ExecutionInfo(
                execution_type="cloud", node_id=None, latency_ms=1.0, co2_grams=0.001, co2_saved_grams=0.0
            ),
        )
    ]


def gateway_app() -> Any:
    # Logging as the gateway's entry point sets it up under `koprogo up`: INFO, to a LOG_FILE.
    log_file = Path(tempfile.mkdtemp(prefix="koprogo-bench-gateway-")) / "gateway.log"
    configure_logging("INFO", "gateway", env={"LOG_FILE": str(log_file)})
    app = create_app(GatewaySettings(**AUTH_SETTINGS))
    admission = ChatAdmission(
        limiter=RateLimiter(store=FakeCounterStore(), clock=time.time),
        input_limits=InputLimits(),
        copro_policy=RateLimitPolicy("copro", 10**8, 3600),
        user_policy=RateLimitPolicy("user", 10**8, 60),
    )
    # What the routes read of the gateway (the lifespan, which connects to NATS, is not run).
    app.state.gateway = SimpleNamespace(
        verifier=JwtVerifier(secret=SECRET, issuer=ISSUER, audience=AUDIENCE, leeway_s=30),
        chat=ChatService(
            bus=FakeChatBus(completed), admission=admission, registry=NodeRegistry(), timeout_s=5.0
        ),
    )
    return app


async def measure(requests: int, profile: Path | None) -> float:
    app = gateway_app()
    token = mint_token(
        SECRET,
        user="bench",
        copros=[COPRO],
        scopes=["mcp:read", "mcp:write"],
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    headers = [
        (b"host", b"gateway"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
        (b"authorization", f"Bearer {token}".encode()),
    ]

    async def one() -> None:
        sent: list[dict[str, Any]] = []
        answered = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await answered.wait()  # as a server does: the disconnect only after the answer
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": list(headers),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }
        await app(scope, receive, send)
        answered.set()
        if sent[0]["status"] != 200:
            raise SystemExit(f"the gateway answered {sent[0]['status']}: {sent[1:]}")

    for _ in range(200):  # warm-up: lazy imports, caches, the first verification
        await one()
    gc.collect()
    gc.freeze()  # as the gateway's entry point does
    profiler = cProfile.Profile() if profile else None
    started = time.process_time()
    if profiler:
        profiler.enable()
    for _ in range(requests):
        await one()
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    return (time.process_time() - started) / requests


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    per_request = uvloop.run(measure(args.requests, args.profile))
    print(
        f"{per_request * 1e6:.1f} us of CPU per chat ({args.requests} chats, load average {Path('/proc/loadavg').read_text().split()[0]})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
