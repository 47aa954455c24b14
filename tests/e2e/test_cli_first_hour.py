"""The CLI as a newcomer meets it (issue 9): a closed pipe, `chat -m`, and a 401 that says which
token was sent, where the CLI looked for one and how to point it elsewhere."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from koprogo_cli.dev_auth import dev_token_path, ensure_jwt_secret, write_dev_token
from koprogo_cli.invocation import command_hint
from koprogo_cli.ports import free_port
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.e2e.conftest import RunningStack
from tests.e2e.test_cli import koprogo
from tests.token_support import AUTH_SETTINGS

StackFactory = Callable[..., Awaitable[RunningStack]]
CLI = (sys.executable, "-m", "koprogo_cli.main")
PIPE_SIZE = 64 * 1024


def _shell_env() -> dict[str, str]:
    """The environment of a user's shell. Without PYTHONUNBUFFERED (set where these tests run):
    unbuffered, Python drops the rest of a partial pipe write silently instead of raising."""
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def _closed_reader() -> int:
    """The write end of a pipe whose reader is already gone (a `head` that quit), for a child's stdout."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def test_big_output_into_a_pipe_whose_reader_quits_after_one_line_ends_quietly(tmp_path: Path) -> None:
    """`koprogo nats-config ... | head -1`: hundreds of kB (the pipe holds 64 kB), the reader reads one line and quits."""
    nodes = [arg for i in range(300) for arg in ("--node", f"pi-{i}={BUNDLED_MODEL_ID}")]
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    with subprocess.Popen(
        [*CLI, "nats-config", "--keys-dir", str(tmp_path / "keys"), *nodes],
        stdout=write_end,
        stderr=subprocess.PIPE,
        env=_shell_env(),
    ) as proc:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            assert reader.readline().startswith(b"# Written by `koprogo nats-config`")
        _, err = proc.communicate(timeout=60)
    # Proof that the output did overflow the pipe: the same command into a file.
    whole = subprocess.run(
        [*CLI, "nats-config", "--keys-dir", str(tmp_path / "keys"), *nodes], capture_output=True, check=True
    )
    assert len(whole.stdout) > 4 * PIPE_SIZE
    assert err == b"" and proc.returncode == 1


def test_help_into_a_closed_pipe_ends_quietly() -> None:
    """argparse prints and exits on its own: the closed pipe surfaces at the last flush."""
    write_end = _closed_reader()
    try:
        done = subprocess.run(
            [*CLI, "--help"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=_shell_env(),
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == b"" and done.returncode == 1


async def test_models_json_into_a_closed_pipe_ends_quietly(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0)
    write_end = _closed_reader()
    try:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "models",
            "--json",
            "--url",
            stack.gateway_url,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
            env=_shell_env(),
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert err.decode() == "" and proc.returncode == 1


def test_models_list_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    write_end = _closed_reader()
    try:
        done = subprocess.run(
            [*CLI, "models", "list", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=_shell_env() | {"KOPROGO_MODELS_DIR": str(tmp_path)},
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == b"" and done.returncode == 1


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_models_pull_speaks_as_koprogo_and_names_the_up_that_serves_the_model(tmp_path: Path) -> None:
    """The node's model manager runs it, but a `koprogo` user is told `koprogo` commands."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "house.gguf").write_bytes(b"GGUF" + os.urandom(100_000))  # a pull keeps GGUF files only
    env = _shell_env() | {"KOPROGO_MODELS_DIR": str(tmp_path / "models")}
    files = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(served)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{files.server_address[1]}/house.gguf"
        pulled = subprocess.run(
            # A plain-http source on this machine, with no digest to check: both said explicitly.
            [*CLI, "models", "pull", url, "--id", "house-model", "--allow-http-loopback", "--allow-unpinned"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        files.shutdown()
        files.server_close()
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == f"{tmp_path / 'models' / 'house-model.gguf'}\n"
    assert f"serve it: `{command_hint('up', '--model', 'house-model')}`" in pulled.stderr
    refused = subprocess.run(
        [*CLI, "models", "rm", "llama3:8b"], capture_output=True, text=True, env=env, timeout=60
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"koprogo models: llama3:8b is not in {tmp_path / 'models'}"), (
        refused.stderr
    )
    usage = subprocess.run(
        [*CLI, "models", "pull", "-h"], capture_output=True, text=True, env=env, timeout=60
    )
    assert usage.returncode == 0 and usage.stdout.startswith("usage: koprogo models pull "), usage.stdout


async def test_chat_takes_dash_m_for_the_model(stack_factory: StackFactory, tmp_path: Path) -> None:
    stack = await stack_factory(edge_nodes=1, chat_timeout_s=20)
    data = ("--data-dir", str(tmp_path))
    code, out, err = await koprogo(
        stack, "chat", "Bonjour", "-m", BUNDLED_MODEL_ID, "--max-tokens", "8", "--json", *data
    )
    assert code == 0, err
    assert json.loads(out)["model"] == BUNDLED_MODEL_ID
    # -m really reaches the gateway: a model nothing serves is refused by name.
    code, _, err = await koprogo(stack, "chat", "Bonjour", "-m", "llama3:8b", "--max-tokens", "8", *data)
    assert code == 1 and "llama3:8b" in err, err


def _one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


async def test_a_401_names_the_token_file_it_looked_for_and_how_to_point_elsewhere(
    stack_factory: StackFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    empty = tmp_path / "empty"
    code, _, err = await koprogo(stack, "models", "--data-dir", str(empty))
    assert code == 1
    assert _one_line(err).startswith("koprogo models: 401 unauthorized: ")
    assert f"no token sent: no KOPROGO_TOKEN and no dev token at {dev_token_path(empty)};" in err
    for way_out in ("KOPROGO_TOKEN=", "--data-dir DIR", "KOPROGO_DATA_DIR=DIR", "`make up`"):
        assert way_out in err, way_out

    # The data folder from the environment is the one named.
    monkeypatch.setenv("KOPROGO_DATA_DIR", str(tmp_path / "from-env"))
    code, _, err = await koprogo(stack, "stats")
    assert code == 1 and f"no dev token at {dev_token_path(tmp_path / 'from-env')};" in _one_line(err)
    monkeypatch.delenv("KOPROGO_DATA_DIR")

    # A dev token from another stack (its own secret) is sent, refused, and named with its file.
    other = tmp_path / "other-stack"
    ensure_jwt_secret(other, environ={})
    write_dev_token(other)
    code, _, err = await koprogo(stack, "models", "--data-dir", str(other))
    assert code == 1 and f"the dev token at {dev_token_path(other)} was refused" in _one_line(err)
    assert f"`{command_hint('up', '--data-dir', str(other))}` writes a fresh one" in err

    # KOPROGO_TOKEN wins over the file, and the message says that is what was refused.
    code, _, err = await koprogo(stack, "models", "--data-dir", str(other), user_token="not-a-jwt")
    assert code == 1 and "the token in KOPROGO_TOKEN was refused" in _one_line(err)
    assert str(dev_token_path(other)) in err


async def test_an_unreachable_local_gateway_says_how_to_start_the_stack() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "models",
        "--url",
        f"http://127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 1
    assert f"gateway unreachable at http://127.0.0.1:{port}" in _one_line(err.decode())
    assert f"`{command_hint('up', '--port', str(port))}` starts it" in err.decode()
