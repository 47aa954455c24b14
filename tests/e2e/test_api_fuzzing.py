"""Schemathesis against the gateway's own OpenAPI spec: no 5xx, no route that ignores auth.

It generates requests from the published schema (examples, boundary values, then random
data) and sends them to a running stack with authentication on, once as an admin (every
answer must be a documented 4xx or a success, never a 5xx) and once without any token
(`ignored_auth`: every protected operation must refuse).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.e2e.conftest import RunningStack
from tests.token_support import AUTH_SETTINGS, bearer, token

StackFactory = Callable[..., Awaitable[RunningStack]]
COPRO = "550e8400-e29b-41d4-a716-446655440000"


async def schemathesis(stack: RunningStack, tmp_path: Path, *args: str) -> tuple[int, str]:
    st = Path(sys.executable).with_name("st")
    proc = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{stack.gateway_url}/openapi.json",
        "--seed=20261129",  # reproducible: a failure can be replayed
        "--max-examples=25",
        "--workers=1",
        "--request-timeout=30",
        "--phases=examples,coverage,fuzzing",
        f"--report-dir={tmp_path}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def test_generated_requests_never_get_a_server_error(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    # Limits high enough that the fuzzer's burst is not the thing being tested.
    stack = await stack_factory(
        edge_nodes=0, chat_timeout_s=5, rate_limit_per_copro=0, rate_limit_per_user=0, **AUTH_SETTINGS
    )
    admin = bearer(token(user="admin-1", copros=[COPRO], scopes=("mcp:admin",)))["Authorization"]
    code, out = await schemathesis(
        stack, tmp_path, f"--header=Authorization:{admin}", "--checks=not_a_server_error"
    )
    assert code == 0, out[-6000:]


async def test_no_operation_answers_without_a_token(stack_factory: StackFactory, tmp_path: Path) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    code, out = await schemathesis(
        stack,
        tmp_path,
        "--checks=ignored_auth,not_a_server_error",
        "--exclude-path-regex=^/(health|ready|metrics)$",
    )
    assert code == 0, out[-6000:]
