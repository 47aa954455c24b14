"""`koprogo models | stats | chat | health` against a running stack, as a user types them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable

from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.e2e.conftest import RunningStack
from tests.token_support import AUTH_SETTINGS, token

StackFactory = Callable[..., Awaitable[RunningStack]]
COPRO = "3f2a1c9e-8b7d-4e6f-a5c4-b3d2e1f0a9b8"


async def koprogo(stack: RunningStack, *args: str, user_token: str | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "KOPROGO_URL": stack.gateway_url}
    env.pop("KOPROGO_TOKEN", None)
    if user_token:
        env["KOPROGO_TOKEN"] = user_token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "koprogo_cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_models_stats_and_health_print_tables_or_json(stack_factory: StackFactory) -> None:
    resident = token(user="resident-1", copros=[COPRO], scopes=("mcp:read", "mcp:write"))
    stack = await stack_factory(edge_nodes=1, probe_token=resident, **AUTH_SETTINGS)
    code, out, err = await koprogo(stack, "models", user_token=resident)
    assert code == 0, err
    header, _rule, *rows = out.splitlines()
    assert header.split() == ["model", "provider", "context", "available", "edge"]
    assert any(row.split()[0] == BUNDLED_MODEL_ID and row.split()[3] == "yes" for row in rows), out
    code, out, err = await koprogo(stack, "models", "--json", user_token=resident)
    assert code == 0 and any(m["id"] == BUNDLED_MODEL_ID for m in json.loads(out)["models"])

    code, out, err = await koprogo(
        stack, "chat", "Bonjour", "--copro", COPRO, "--max-tokens", "8", "--json", user_token=resident
    )
    assert code == 0, err
    assert json.loads(out)["execution_info"]["execution_type"] == "edge"
    # Without --json the answer streams to the terminal, then where it ran goes to stderr.
    code, out, err = await koprogo(
        stack, "chat", "Bonjour", "--copro", COPRO, "--max-tokens", "8", user_token=resident
    )
    assert code == 0, err
    assert out.strip() and f"[{BUNDLED_MODEL_ID} · edge edge-test-0 · " in err
    code, out, err = await koprogo(stack, "stats", "--copro", COPRO, "--json", user_token=resident)
    assert code == 0 and json.loads(out)["total_requests"] in (0, 1, 2), err  # the ledger may lag
    code, out, _ = await koprogo(stack, "health")
    assert code == 0 and "nats" in out


async def test_a_refusal_prints_the_gateways_reason_and_exits_1(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    code, _, err = await koprogo(stack, "models")  # no token at all
    assert code == 1 and "401 unauthorized" in err
    reader = token(user="resident-1", copros=[COPRO], scopes=("mcp:read",))
    code, _, err = await koprogo(stack, "chat", "Bonjour", "--copro", COPRO, "--json", user_token=reader)
    assert code == 1 and "403 forbidden" in err
    code, _, err = await koprogo(stack, "models", "--url", "http://127.0.0.1:9")
    assert code == 1 and "gateway unreachable" in err
