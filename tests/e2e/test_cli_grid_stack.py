"""`koprogo up`, two nodes of other owners joined with `koprogo node join` and started with the command it
prints, a grid task verified by quorum and paid; `koprogo ledger verify` passes, then fails once a
ledger row is edited by hand in PostgreSQL (as an operator with the database's password could).

Everything as a user does it: the CLI in subprocesses, real processes for every service and node,
the embedded NATS (with keys) and PostgreSQL of `koprogo up`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from koprogo_cli.ports import free_port
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.nats_connection import nkey_public_key
from tests.conftest import postgres_dir
from tests.e2e.test_grid_tasks import FIXTURES

COPRO = "550e8400-e29b-41d4-a716-446655440000"
JOINED = {"pi-a": "alice", "pi-b": "bob"}


def koprogo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "koprogo_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def node_command(
    join_output: str, seed_file: Path, nats_url: str, model_path: Path
) -> tuple[dict[str, str], list[str]]:
    """Step 4 of `node join`'s output, as the other machine runs it (here: this one, on loopback)."""
    (line,) = [line for line in join_output.splitlines() if "4. run it:" in line]
    words = shlex.split(line.split("`")[1])
    split = words.index("koprogo-node")
    env = dict(word.split("=", 1) for word in words[:split])
    env.update(NATS_URL=nats_url, NATS_NKEY_SEED_FILE=str(seed_file))
    args = [str(model_path) if word == "/path/to/model.gguf" else word for word in words[split + 1 :]]
    return env, [str(Path(sys.executable).parent / "koprogo-node"), *args, "--port", str(free_port())]


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_two_joined_nodes_of_other_owners_verify_a_task_and_the_ledger_audit_catches_an_edit(
    bundled_model_path: Path,
) -> None:
    with postgres_dir() as folder:
        stack_with_joined_nodes(folder, bundled_model_path)


def stack_with_joined_nodes(tmp_path: Path, model_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL", "JWT_SECRET", "JWKS_URL", "KOPROGO_TOKEN", "NODE_ID")
        and not k.startswith("CONTENT_KEY")
    }
    env["LEDGER_HEAD_INTERVAL_S"] = "1"  # signed heads within the test's time
    port = free_port()
    data = tmp_path / "data"
    url = f"http://127.0.0.1:{port}"
    cli = {**env, "KOPROGO_URL": url}
    keys = data / "secrets" / "nats"
    try:
        # Joined before the stack starts (it admits them from its start): joining a running stack
        # reloads its NATS users, and nats-server then forgets the reply permissions of the polls
        # the scheduler holds at that moment (their answers are refused once).
        joins = {}
        for node_id, owner in JOINED.items():
            joined = koprogo(
                "node", "join", "--data-dir", str(data), "--node-id", node_id, "-m", BUNDLED_MODEL_ID, "--owner", owner,
                env=env,
            )  # fmt: skip
            assert joined.returncode == 0, joined.stdout + joined.stderr
            assert f"GRID_SCHEDULER_PUBLIC_KEY={nkey_public_key(keys / 'grid.nk')}" in joined.stdout
            joins[node_id] = joined.stdout
        up = koprogo("up", "--detach", "--no-demo", "--data-dir", str(data), "--port", str(port), env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        nats_url = json.loads((data / "koprogo.json").read_text())["nats_url"]
        commands = {
            node_id: node_command(said, keys / "nodes" / f"{node_id}.nk", nats_url, model_path)
            for node_id, said in joins.items()
        }
        admin = koprogo(
            "token", "--data-dir", str(data), "--user", "auditor", "--scopes", "mcp:read,mcp:admin", env=env
        )
        alice = koprogo("token", "--data-dir", str(data), "--user", "alice", "--copro", COPRO, env=env)
        assert admin.returncode == 0 and alice.returncode == 0, admin.stderr + alice.stderr
        cli["KOPROGO_TOKEN"] = admin.stdout.strip()
        with (
            running(commands["pi-a"][1], {**env, **commands["pi-a"][0]}, tmp_path / "pi-a.log"),
            running(commands["pi-b"][1], {**env, **commands["pi-b"][0]}, tmp_path / "pi-b.log"),
        ):
            # A task submitted while the joined nodes still load their model is decided by the
            # stack's own node alone (`accepted_unchecked`): submitted once both are heard.
            wait_heard(url, cli["KOPROGO_TOKEN"], tmp_path, timeout=180)
            task = run_ocr_task(url, alice.stdout.strip())
        verification = task["verification"]
        owners = {r["owner"] for r in verification["replicas"] if r["verdict"] == "valid"}
        assert verification["outcome"] == "accepted" and len(owners) >= 2, verification
        assert task["result"]["fields"]["invoice_number"]["value"] == "F-2025-0142"

        def audited() -> dict[str, Any] | None:
            done = koprogo("ledger", "verify", "--json", env=cli)
            report = json.loads(done.stdout) if done.stdout.strip() else {}
            return report if report.get("ok") and report["entries"] and report["signed_heads"] else None

        report = wait_for(audited, 60, "the task's rewards in the ledger, under a signed head")
        export = tmp_path / "ledger.jsonl"
        exported = koprogo("ledger", "export", "-o", str(export), env=cli)
        assert exported.returncode == 0, exported.stderr
        ledger_key = (keys / "ledger.pub").read_text()
        checked = koprogo("ledger", "verify", "--export", str(export), "--ledger-key", ledger_key, env=env)
        assert checked.returncode == 0 and checked.stdout.startswith("OK: "), checked.stdout + checked.stderr

        # An operator edits a reward by hand (the append-only trigger switched off first).
        edit_ledger_row(data, seq=1)
        for argv in (["ledger", "verify"], ["ledger", "verify", "--export", str(tmp_path / "after.jsonl")]):
            if "--export" in argv:
                assert koprogo("ledger", "export", "-o", argv[-1], env=cli).returncode == 0
            failed = koprogo(*argv, env=cli)
            assert failed.returncode == 1, failed.stdout + failed.stderr
            assert failed.stdout.startswith("FAILED at 1: entry 1: its fields do not hash to its hash"), (
                failed.stdout
            )
        assert report["balances_sum_tokens"] == 0
    finally:
        koprogo("down", "--data-dir", str(data), env=env)
    for service_log in (data / "logs").glob("*.log"):
        text = service_log.read_text(errors="replace").lower()
        assert "permissions violation" not in text, service_log


def wait_heard(url: str, admin_token: str, logs: Path, *, timeout: float) -> None:
    """Until the gateway hears both joined nodes' heartbeats (GET /mcp/v1/nodes); fails naming
    those missing, with the end of their logs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(
                f"{url}/mcp/v1/nodes", headers={"Authorization": f"Bearer {admin_token}"}, timeout=10
            )
            said = f"{response.status_code} {response.text[:300]}"
            ok = response.status_code == 200
            heard = {n["node_id"] for n in response.json()["edge_nodes"]} if ok else set()
        except httpx.HTTPError as exc:
            said, heard = repr(exc), set()
        missing = set(JOINED) - heard
        if not missing:
            return
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {node}.log\n"
                + "\n".join((logs / f"{node}.log").read_text(errors="replace").splitlines()[-20:])
                for node in sorted(missing)
            )
            raise AssertionError(
                f"nodes {sorted(missing)} not heard after {timeout:g}s (last: {said})\n{tails}"
            )
        time.sleep(0.5)


def run_ocr_task(url: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    invoice = FIXTURES / "facture-chauffage-F-2025-0142.pdf"
    submitted = httpx.post(
        f"{url}/mcp/v1/execute",
        data={"task_type": "ocr_invoice", "copro_id": COPRO},
        files={"document": (invoice.name, invoice.read_bytes())},
        headers=headers,
        timeout=30,
    )
    assert submitted.status_code == 202, submitted.text

    def final() -> dict[str, Any] | None:
        response = httpx.get(f"{url}/mcp/v1/tasks/{submitted.json()['id']}", headers=headers, timeout=10)
        task: dict[str, Any] = response.json() if response.status_code == 200 else {}
        return task if task.get("status") in ("completed", "failed", "expired", "cancelled") else None

    task: dict[str, Any] = wait_for(final, 180, "the task verified by the joined nodes")
    assert task["status"] == "completed", task
    return task


def edit_ledger_row(data: Path, seq: int) -> None:
    found = re.search(r"PostgreSQL \(embedded.*\) at (postgresql://\S+)", (data / "koprogo.log").read_text())
    assert found is not None
    password = (data / "secrets" / "postgres-password").read_text().strip()
    dsn = found[1].replace("postgres@", f"postgres:{password}@", 1)

    async def edit() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute("ALTER TABLE grid_ledger_entries DISABLE TRIGGER USER")
                await conn.execute(
                    "UPDATE grid_ledger_entries SET amount_mt = amount_mt + 1000 WHERE seq = $1", seq
                )
                await conn.execute("ALTER TABLE grid_ledger_entries ENABLE TRIGGER USER")
        finally:
            await conn.close()

    asyncio.run(edit())
