"""`koprogo up` brings the whole stack up on embedded servers, `koprogo down` stops it, data survives."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest

from koprogo_cli.dev_auth import dev_token_path, jwt_secret_path
from koprogo_cli.ports import free_port
from koprogo_cli.secrets import content_keys_path
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import postgres_dir
from tests.e2e.test_grid_tasks import FIXTURES

ALICE = "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def koprogo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "koprogo_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_up_answers_a_chat_and_a_restart_keeps_the_data() -> None:
    with postgres_dir() as folder:  # `koprogo up` keeps an embedded PostgreSQL in its data folder
        up_chat_restart(folder)


def up_chat_restart(tmp_path: Path) -> None:
    # Without CONTENT_KEYS*: `koprogo up` makes the content keys itself, in the data folder.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL", "JWT_SECRET", "JWKS_URL") and not k.startswith("CONTENT_KEY")
    }
    port = free_port()
    data = str(tmp_path / "data")
    url = f"http://127.0.0.1:{port}"
    body = {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": "Bonjour, résume ce PV en une phrase."}],
        "context": "copro:550e8400-e29b-41d4-a716-446655440000",
        "max_tokens": 32,
    }
    try:
        up = koprogo("up", "--detach", "--no-demo", "--data-dir", data, "--port", str(port), env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        # Authentication is on: no token, no chat; the dev token is for the demo copro only.
        assert httpx.post(f"{url}/mcp/v1/chat", json=body, timeout=30).status_code == 401
        dev_token_file = dev_token_path(Path(data))
        assert stat.S_IMODE(dev_token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(jwt_secret_path(Path(data)).stat().st_mode) == 0o600
        dev = {"Authorization": f"Bearer {dev_token_file.read_text().strip()}"}
        assert httpx.post(f"{url}/mcp/v1/chat", json=body, headers=dev, timeout=30).status_code == 403
        minted = koprogo(
            "token", "--user", ALICE, "--copro", body["context"].removeprefix("copro:"),
            "--data-dir", data, env=env,
        )  # fmt: skip
        assert minted.returncode == 0, minted.stderr
        alice = {"Authorization": f"Bearer {minted.stdout.strip()}"}
        chat = httpx.post(f"{url}/mcp/v1/chat", json=body, headers=alice, timeout=120)
        assert chat.status_code == 200, chat.text
        assert chat.json()["execution_info"]["execution_type"] == "edge"
        assert_nats_admits_only_the_stacks_own_keys(Path(data))
        # The router's refusal path, within its permissions too (no node serves this model).
        unserved = httpx.post(
            f"{url}/mcp/v1/chat", json=body | {"model": "mistral:7b-instruct-q4"}, headers=alice, timeout=30
        )
        assert unserved.status_code == 503, unserved.text
        # A grid task, within the gateway's, the scheduler's and the node's permissions: the
        # document goes to the object store, the node reads it and reports, the ledger projects.
        invoice = FIXTURES / "facture-chauffage-F-2025-0142.pdf"
        submitted = httpx.post(
            f"{url}/mcp/v1/execute",
            data={"task_type": "ocr_invoice", "copro_id": body["context"].removeprefix("copro:")},
            files={"document": (invoice.name, invoice.read_bytes())},
            headers=alice,
            timeout=30,
        )
        assert submitted.status_code == 202, submitted.text
        task_url = f"{url}/mcp/v1/tasks/{submitted.json()['id']}"
        deadline = time.monotonic() + 120
        while (task := httpx.get(task_url, headers=alice, timeout=10).json())["status"] != "completed":
            # "verifying": its result waits GRID_OWNER_WAIT_S for a second owner's node to agree.
            assert task["status"] in ("pending", "assigned", "running", "verifying"), task
            assert time.monotonic() < deadline, task
            time.sleep(0.5)
        assert task["result"]["fields"]["invoice_number"]["value"] == "F-2025-0142"
        # One owner on this stack (its bundled node): the quorum of 2 cannot be reached, so the
        # result is taken alone, unchecked (no trust earned, its reward held in escrow).
        verification = task["verification"]
        assert verification["outcome"] == "accepted_unchecked", verification
        assert verification["quorum"] == 1 and "owners_short" in verification["note"], verification
        assert [r["verdict"] for r in verification["replicas"]] == ["unchecked"], verification
        # GDPR erasure, within the ledger's permissions too: it scrubs the audit log as well.
        erased = httpx.delete(f"{url}/mcp/v1/users/{ALICE}/data", headers=alice, timeout=30)
        assert erased.status_code == 202, erased.text
        keys_file = content_keys_path(Path(data))
        assert keys_file.stat().st_mode & 0o777 == 0o600
        keys_before = keys_file.read_text()
        down = koprogo("down", "--data-dir", data, env=env)
        assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
        assert not Path(data, "koprogo.pid").exists()

        up_again = koprogo("up", "--detach", "--no-demo", "--data-dir", data, "--port", str(port), env=env)
        assert up_again.returncode == 0, up_again.stdout + up_again.stderr
        # The ledger may still be catching up on its durable consumer after the restart.
        deadline = time.monotonic() + 15
        stats_url = f"{url}/mcp/v1/stats?context={body['context']}"
        # Tokens minted before the restart still verify: the local secret is kept.
        while (stats := httpx.get(stats_url, headers=alice, timeout=10).json())["total_requests"] == 0:
            assert time.monotonic() < deadline, "the first run's chat is missing after the restart"
            time.sleep(0.2)
        assert stats["total_requests"] == 2 and stats["grid_requests"] == 1
        assert keys_file.read_text() == keys_before, "a restart reuses the content keys, never replaces them"
        assert stats["total_tokens"] == chat.json()["usage"]["total_tokens"]
    finally:
        koprogo("down", "--data-dir", data, env=env)
    log = Path(data, "koprogo.log").read_text()
    assert log.count("stopped") == 2
    # Every service did all its work within its NATS permissions.
    for service_log in Path(data, "logs").glob("*.log"):
        text = service_log.read_text(errors="replace").lower()
        assert "permissions violation" not in text and "authorization violation" not in text, service_log


def assert_nats_admits_only_the_stacks_own_keys(data: Path) -> None:
    """The embedded server requires the nkeys minted under data/secrets/nats (mode 0600)."""
    config = (data / "nats" / "nats-server.conf").read_text()
    assert "sync_interval: always" in config and "authorization {" in config
    keys_dir = data / "secrets" / "nats"
    seeds = sorted(str(p.relative_to(keys_dir)) for p in keys_dir.rglob("*.nk"))
    nodes = [seed for seed in seeds if seed.startswith("nodes/")]
    assert sorted(set(seeds) - set(nodes)) == [
        "admin.nk",
        "cloud.nk",
        "gateway.nk",
        "grid.nk",
        "ledger.nk",
        "router.nk",
    ]
    assert len(nodes) == 1, nodes  # the bundled node's
    for seed in seeds:
        assert stat.S_IMODE((keys_dir / seed).stat().st_mode) == 0o600
    found = re.search(r"^port: (\d+)$", config, re.MULTILINE)
    assert found is not None
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        asyncio.run(nats.connect(f"nats://127.0.0.1:{found[1]}", allow_reconnect=False, connect_timeout=5))
