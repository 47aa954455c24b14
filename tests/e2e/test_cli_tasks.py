"""`koprogo execute | tasks` as a user types them, against a real gateway, grid scheduler and edge
node (predict_expenses: statsmodels on the node, no model needed)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack
from tests.token_support import AUTH_SETTINGS, token

StackFactory = Callable[..., Awaitable[RunningStack]]
COPRO = "5b7e0c2a-4d1f-4a8e-9c3b-2e6f1a0d9c87"
OTHER_COPRO = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
CHARGES = FIXTURES / "charges-les-tilleuls-2022-2024.csv"
CLI = (sys.executable, "-m", "koprogo_cli.main")


def _env(stack: RunningStack, user_token: str) -> dict[str, str]:
    return {**os.environ, "KOPROGO_URL": stack.gateway_url, "KOPROGO_TOKEN": user_token}


async def koprogo(
    stack: RunningStack, user_token: str, *args: str, stdin: bytes | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=_env(stack, user_token),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=240)
    return proc.returncode if proc.returncode is not None else -1, out.decode(), err.decode()


def residence_history(months: int = 30) -> list[dict[str, Any]]:
    """Another building than the fixture's: a Brussels residence with a lift, a garden and a
    concierge, its heating higher in winter, written as the JSON list."""
    history = []
    for i in range(months):
        year, month = 2022 + i // 12, i % 12 + 1
        winter = month in (1, 2, 3, 11, 12)
        history += [
            {
                "month": f"{year}-{month:02d}",
                "category": "verwarming",
                "amount": 3100.0 + (1400 if winter else 0) + 7 * i,
            },
            {"month": f"{year}-{month:02d}", "category": "conciergerie", "amount": 1850.0},
            {
                "month": f"{year}-{month:02d}",
                "category": "jardin",
                "amount": 220.0 + (160 if month in (4, 5, 6, 9) else 0),
            },
        ]
    return history


async def test_execute_prints_the_forecast_as_json_and_follows_the_task_on_stderr(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    resident = token(user="resident-1", copros=[COPRO])
    stack = await stack_factory(grid=True, probe_token=resident, **AUTH_SETTINGS)

    # The fixture's CSV uploaded as a file (multipart), a parameter given with --param.
    code, out, err = await koprogo(
        stack, resident, "execute", "predict_expenses", str(CHARGES), "--param", "horizon_months=6"
    )
    assert code == 0, err
    forecast = json.loads(out)
    assert forecast["horizon_months"] == 6 and forecast["first_forecast_month"] == "2025-01"
    assert len(forecast["categories"]) == 6
    assert all(len(c["forecast"]) == 6 for c in forecast["categories"].values())
    lines = err.splitlines()
    first = re.match(r"task ([0-9a-f-]{36}): ", lines[0])
    assert first is not None, err
    task_id = first.group(1)
    assert f"task {task_id}: completed (" in err
    assert any(f"task {task_id}: attempt 1 on edge-test-0" in line for line in lines), err
    assert f"task {task_id} completed on edge-test-0 in " in lines[-1] and "g CO₂" in lines[-1]
    assert "\r" not in err  # no spinner when stderr is not a terminal

    # Another building, its history as --json @file, the copro named; the horizon overridden.
    history_file = tmp_path / "residence.json"
    history_file.write_text(json.dumps({"history": residence_history(), "horizon_months": 12}))
    code, out, err = await koprogo(
        stack, resident, "execute", "predict_expenses", "--json", f"@{history_file}",
        "--param", "horizon_months=3", "--copro", COPRO,
    )  # fmt: skip
    assert code == 0, err
    residence = json.loads(out)
    assert set(residence["categories"]) == {"verwarming", "conciergerie", "jardin"}
    assert [m["month"] for m in residence["total"]] == ["2024-07", "2024-08", "2024-09"]
    concierge = residence["categories"]["conciergerie"]["forecast"]
    assert [m["mean"] for m in concierge] == [1850.0] * 3  # a fixed fee stays one
    second_id = err.splitlines()[0].split()[1].rstrip(":")

    code, out, err = await koprogo(stack, resident, "tasks", "--json", "--status", "completed")
    assert code == 0, err
    assert {t["id"] for t in json.loads(out)["tasks"]} >= {task_id, second_id}
    code, out, err = await koprogo(stack, resident, "tasks", "--type", "predict_expenses")
    header, _rule, *rows = out.splitlines()
    assert header.split()[:4] == ["id", "type", "status", "created"]
    assert {row.split()[0] for row in rows} >= {task_id, second_id}
    code, out, err = await koprogo(stack, resident, "tasks", "--type", "ocr_invoice")
    assert (code, out, err.strip()) == (0, "", "no tasks")

    code, out, err = await koprogo(stack, resident, "tasks", task_id)
    assert code == 0, err
    assert re.search(rf"^id +{task_id}$", out, re.M) and re.search(r"^status +completed$", out, re.M), out
    assert "edge-test-0" in out and "result:" in out
    assert json.loads(out.split("result:", 1)[1])["horizon_months"] == 6


async def test_a_task_the_node_refuses_exits_1_with_its_error_and_nothing_on_stdout(
    stack_factory: StackFactory,
) -> None:
    resident = token(user="resident-2", copros=[COPRO])
    stack = await stack_factory(grid=True, probe_token=resident, **AUTH_SETTINGS)
    history = residence_history(12)
    history[7]["amount"] = "beaucoup"
    code, out, err = await koprogo(
        stack, resident, "execute", "predict_expenses", "--json", json.dumps({"history": history})
    )
    assert code == 1 and out == ""
    last = err.splitlines()[-1]
    assert last.startswith("koprogo execute: task ") and " failed: invalid_input: " in last, err
    assert "history[7]" in last and "(attempts: edge-test-0 " in last

    # Refused by the gateway before any task exists: its own 422, on one line, exit 1.
    code, out, err = await koprogo(stack, resident, "execute", "ocr_invoice", "-", stdin=CHARGES.read_bytes())
    assert (code, out) == (1, "")
    assert err.startswith("koprogo execute: 422 unsupported_document: ocr_invoice does not take a text/csv")
    code, out, err = await koprogo(stack, resident, "execute", "predict_expenses", "--json", "[1, 2]")
    assert (code, out) == (2, "") and "--json: must be a JSON object" in err
    outsider = token(user="outsider", copros=[OTHER_COPRO])
    code, out, err = await koprogo(stack, outsider, "tasks", "--json")
    assert code == 0 and json.loads(out)["tasks"] == []


async def test_ctrl_c_cancels_the_task_and_no_wait_leaves_it_pending(stack_factory: StackFactory) -> None:
    resident = token(user="resident-3", copros=[COPRO])
    # No edge node: the task stays pending until cancelled.
    stack = await stack_factory(grid=True, edge_nodes=0, **AUTH_SETTINGS)
    history = json.dumps({"history": residence_history(12)})

    code, out, err = await koprogo(
        stack, resident, "execute", "predict_expenses", "--json", history, "--no-wait"
    )
    assert code == 0, err
    accepted = json.loads(out)
    assert accepted["status"] == "pending" and accepted["result"] is None
    assert f"koprogo tasks {accepted['id']}" in err

    code, out, err = await koprogo(
        stack, resident, "execute", "predict_expenses", "--json", history, "--timeout", "1.5"
    )
    assert (code, out) == (124, "")
    assert "still pending after 1.5 s" in err

    # On a terminal, a spinner line is redrawn under the change lines.
    terminal, tty = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "execute", "predict_expenses", "--json", history, "--timeout", "1.5",
            env=_env(stack, resident), stdout=asyncio.subprocess.PIPE, stderr=tty,
        )  # fmt: skip
        out_bytes, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        shown = os.read(terminal, 65536).decode()
    finally:
        os.close(tty)
        os.close(terminal)
    assert (proc.returncode, out_bytes) == (124, b"")
    assert "\r\x1b[K" in shown and " pending · 1." in shown, repr(shown)
    assert any(f"\r{frame} pending · " in shown for frame in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")

    proc = await asyncio.create_subprocess_exec(
        *CLI, "execute", "predict_expenses", "--json", history,
        env=_env(stack, resident), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    first = (await asyncio.wait_for(proc.stderr.readline(), timeout=60)).decode()
    assert ": pending (" in first, first
    task_id = first.split()[1].rstrip(":")
    proc.send_signal(signal.SIGINT)
    rest = (await asyncio.wait_for(proc.stderr.read(), timeout=60)).decode()
    assert await proc.wait() == 130
    assert (await proc.stdout.read()) == b""
    assert f"interrupted: cancelling task {task_id}" in rest
    assert f"task {task_id} cancelled" in rest, rest

    async def status_of(task_id: str) -> str:
        code, out, err = await koprogo(stack, resident, "tasks", task_id, "--json")
        assert code == 0, err
        return str(json.loads(out)["status"])

    assert await status_of(task_id) == "cancelled"
    assert await status_of(accepted["id"]) == "pending"

    async def listed_as_pending() -> bool:
        _code, out, _ = await koprogo(stack, resident, "tasks", "--json", "--status", "pending")
        return accepted["id"] in {t["id"] for t in json.loads(out)["tasks"]}

    await wait_until(listed_as_pending, timeout=15)
