"""`koprogo up` serves the chat app and signs it in without copy-paste: the welcome's link and
`koprogo login-link`'s each open one session on the real stack (its gateway holding only its own
NATS key, the used codes in the stack's JetStream KV)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from koprogo_cli.ports import free_port
from tests.conftest import postgres_dir
from tests.e2e.test_koprogo_up import koprogo


def code_in(url: str) -> str:
    prefix, _, code = url.strip().partition("#login=")
    assert prefix.endswith("/mcp-chat/") and code, url
    return code


def test_up_serves_the_app_and_its_login_links_open_one_session_each() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL", "JWT_SECRET", "JWT_SECRET_FILE", "JWKS_URL", "PWA_DIR")
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with postgres_dir() as folder:
        data = str(Path(folder) / "data")
        try:
            up = koprogo("up", "--detach", "--no-demo", "--data-dir", data, "--port", str(port), env=env)
            assert up.returncode == 0, up.stdout + up.stderr
            assert "login-link" in up.stdout, up.stdout  # the detached stack says how to open the app
            welcome = next(
                line
                for line in (Path(data) / "koprogo.log").read_text().splitlines()
                if line.startswith("Open the chat: ")
            )
            assert welcome.startswith(f"Open the chat: {url}/mcp-chat/#login="), welcome

            root = httpx.get(f"{url}/", timeout=10)
            assert root.status_code == 307 and root.headers["location"] == "/mcp-chat/"
            shell = httpx.get(f"{url}/mcp-chat/", timeout=10)
            assert shell.status_code == 200 and "<astro-island" in shell.text  # the checkout's web/dist
            assert "'sha256-" in shell.headers["content-security-policy"]

            printed = koprogo("login-link", "--data-dir", data, env=env)
            assert printed.returncode == 0, printed.stderr
            for code in (code_in(welcome.removeprefix("Open the chat: ")), code_in(printed.stdout)):
                opened = httpx.post(f"{url}/mcp/v1/session/exchange", json={"code": code}, timeout=10)
                assert opened.status_code == 200, opened.text
                session = {"Authorization": f"Bearer {opened.json()['token']}"}
                assert httpx.get(f"{url}/mcp/v1/models", headers=session, timeout=10).status_code == 200
                again = httpx.post(f"{url}/mcp/v1/session/exchange", json={"code": code}, timeout=10)
                assert again.status_code == 409, again.text
        finally:
            down = koprogo("down", "--data-dir", data, env=env)
            assert down.returncode == 0, down.stdout + down.stderr
