"""`koprogo up` brings the whole stack up on embedded servers, `koprogo down` stops it, data survives."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from koprogo_cli.embedded import free_port
from koprogo_shared.catalogue import BUNDLED_MODEL_ID


def koprogo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "koprogo_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_up_answers_a_chat_and_a_restart_keeps_the_data(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
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
        chat = httpx.post(f"{url}/mcp/v1/chat", json=body, timeout=120)
        assert chat.status_code == 200, chat.text
        assert chat.json()["execution_info"]["execution_type"] == "edge"
        down = koprogo("down", "--data-dir", data, env=env)
        assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
        assert not Path(data, "koprogo.pid").exists()

        up_again = koprogo("up", "--detach", "--no-demo", "--data-dir", data, "--port", str(port), env=env)
        assert up_again.returncode == 0, up_again.stdout + up_again.stderr
        # The ledger may still be catching up on its durable consumer after the restart.
        deadline = time.monotonic() + 15
        while (stats := httpx.get(f"{url}/mcp/v1/stats", timeout=10).json())["total_requests"] == 0:
            assert time.monotonic() < deadline, "the first run's chat is missing after the restart"
            time.sleep(0.2)
        assert stats["total_requests"] == 1
        assert stats["total_tokens"] == chat.json()["usage"]["total_tokens"]
    finally:
        koprogo("down", "--data-dir", data, env=env)
    log = Path(data, "koprogo.log").read_text()
    assert log.count("stopped") == 2
