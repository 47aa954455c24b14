"""A newcomer's first hour, as commands pasted from the README and from what `koprogo up` prints.

The stack runs in a folder laid out like the project's (`data/` and `.venv/` side by side), so
the README's commands run verbatim; the only change made to them is the gateway's port.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from koprogo_cli.dev_auth import DEMO_COPRO_ID, dev_token_path
from koprogo_cli.instance import alive, read_record, running_stack
from koprogo_cli.ports import free_port
from tests.conftest import postgres_dir

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL", "JWT_SECRET", "JWKS_URL", "KOPROGO_TOKEN", "KOPROGO_URL")
        and not k.startswith("CONTENT_KEY")
    }
    return env | extra


def koprogo(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "koprogo_cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def project() -> Iterator[Path]:
    """A folder like the project's: `.venv` (the real one) beside the stack's `data`."""
    with postgres_dir() as folder:  # the embedded PostgreSQL must live outside pytest's tmp tree
        (folder / ".venv").symlink_to(REPO / ".venv")
        yield folder


def first_hour_commands(readme: str) -> list[str]:
    """The shell commands of the README's "first hour" that talk to a running stack, one per logical line."""
    section = readme.split("## The first hour", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"^ *```sh\n(.*?)^ *```", section, flags=re.MULTILINE | re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "make ")):
                commands.append(line)
    return commands


def hints(text: str, containing: str) -> list[str]:
    """The commands in backquotes in `text` that contain `containing`, each naming a program that is there."""
    found = [c for c in re.findall(r"`([^`]+)`", text) if containing in c]
    for command in found:
        program = Path(command.split()[0])
        assert program.is_absolute() or str(program).startswith(".venv/"), command
    return found


def run_shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def test_the_readmes_and_ups_printed_commands_work_and_a_second_up_leaves_the_first_alone(
    project: Path,
) -> None:
    port = free_port()
    env = clean_env()
    up = koprogo("up", "--detach", "--data-dir", "data", "--port", str(port), cwd=project, env=env)
    stop = "false"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        # What `up` printed for the user to run, from the stack's own log: the demo's curl.
        log = (project / "data" / "koprogo.log").read_text()
        printed = [line.removeprefix("$ ") for line in log.splitlines() if line.startswith("$ curl")]
        assert len(printed) == 1, log
        answer = run_shell(printed[0], project, env)
        assert answer.returncode == 0 and '"execution_type": "edge"' in answer.stdout.replace(
            '":"', '": "'
        ), answer.stdout + answer.stderr
        (stop,) = hints(up.stdout, " down")
        assert "smoke test" in log and "models pull llama3:8b-instruct-q4" in log
        token = dev_token_path(project / "data").read_text().strip()
        assert token not in log, "the dev token is never printed into a log"
        assert (project / "data" / "secrets").stat().st_mode & 0o777 == 0o700

        commands = first_hour_commands(README.read_text())
        assert commands[0] == "TOKEN=$(cat data/secrets/dev-token)", commands
        assert sum(c.startswith("curl") for c in commands) >= 4, commands
        stack_env = env | {"KOPROGO_URL": f"http://127.0.0.1:{port}"}
        for command in commands[1:]:
            if command.startswith(("curl", ".venv/bin/koprogo chat")):
                pasted = commands[0] + "\n" + command.replace("localhost:8080", f"localhost:{port}")
                ran = run_shell(pasted, project, stack_env)
                assert ran.returncode == 0 and ran.stdout.strip(), (command, ran.stdout, ran.stderr)
                assert '"error"' not in ran.stdout, (command, ran.stdout)

        # The README's OpenAI SDK example, as printed.
        for snippet in re.findall(r"^ *```python\n(.*?)^ *```", README.read_text(), re.MULTILINE | re.DOTALL):
            code = textwrap.dedent(snippet).replace("localhost:8080", f"localhost:{port}")
            ran = subprocess.run(
                [sys.executable, "-c", code],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr

        # A second start, in the background or not, says a stack runs and leaves it serving.
        record = running_stack(project / "data")
        assert record is not None
        for again in (
            koprogo("up", "--detach", "--data-dir", "data", "--port", str(port), cwd=project, env=env),
            koprogo("up", "--data-dir", "data", "--port", str(port), cwd=project, env=env, timeout=60),
        ):
            assert again.returncode == 0, again.stdout + again.stderr
            assert (
                f"already running on {project / 'data'} (pid {record.pid}): http://127.0.0.1:{port}"
                in again.stdout
            )
            assert hints(again.stdout, " down") == [stop] and again.stderr == ""
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200
        assert running_stack(project / "data") == record
    finally:
        down = run_shell(stop, project, env)  # the stop command `up` printed, as printed
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    stopped = read_record(project / "data")
    assert running_stack(project / "data") is None
    assert stopped is None or not any(alive(pid) for pid in stopped.children)
    again = koprogo("down", cwd=project, env=env)
    assert again.returncode == 0 and "not running" in again.stdout


def test_up_serves_a_gguf_under_its_own_id_beside_the_bundled_model(
    project: Path, bundled_model_path: Path
) -> None:
    port = free_port()
    env = clean_env(KOPROGO_MODELS_DIR=str(project / "models"))
    house = project / "house.gguf"
    house.symlink_to(bundled_model_path)  # any GGUF; this one is on every machine that runs the suite
    # A model that is not pulled: the error names the pull, and nothing starts.
    missing = koprogo("up", "--detach", "--data-dir", "data", "--model", "llama3:8b", cwd=project, env=env)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert len(missing.stderr.splitlines()) == 1, missing.stderr
    assert hints(missing.stderr, " models pull llama3:8b"), missing.stderr
    assert running_stack(project / "data") is None
    up = koprogo(
        "up", "--detach", "--no-demo", "--data-dir", "data", "--port", str(port), "--model", f"house-model={house}",
        cwd=project, env=env,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        dev = {"Authorization": f"Bearer {dev_token_path(project / 'data').read_text().strip()}"}
        url = f"http://127.0.0.1:{port}"
        models = httpx.get(f"{url}/mcp/v1/models", headers=dev, timeout=10).json()["models"]
        house_entry = next(m for m in models if m["id"] == "house-model")
        assert house_entry["is_available"] and house_entry["provider"] == "local"
        assert house_entry["context_length"] >= 128
        body = {
            "model": "house-model",
            "messages": [{"role": "user", "content": "Bonjour"}],
            "context": f"copro:{DEMO_COPRO_ID}",
            "max_tokens": 8,
        }
        chat = httpx.post(f"{url}/mcp/v1/chat", json=body, headers=dev, timeout=120)
        assert chat.status_code == 200, chat.text
        assert chat.json()["model"] == "house-model"
        assert chat.json()["execution_info"]["node_id"].endswith("-house-model")
        log = (project / "data" / "koprogo.log").read_text()
        assert "models served here: smollm2:135m-instruct-q4, house-model" in log
        # Asked again for what it serves: it runs, nothing to do. For more: how to restart with them.
        same = koprogo(
            "up", "--detach", "--data-dir", "data", "--model", f"house-model={house}", cwd=project, env=env
        )
        assert same.returncode == 0 and "already running" in same.stdout, same.stdout + same.stderr
        more = koprogo(
            "up", "--detach", "--data-dir", "data", "--model", f"annex={house}", cwd=project, env=env
        )
        assert more.returncode == 1 and "It does not serve annex: restart it with them" in more.stdout
        assert hints(more.stdout, f" up --model annex={house}"), more.stdout
    finally:
        koprogo("down", cwd=project, env=env)


def test_a_busy_port_is_one_line_naming_the_cause_and_the_fix(project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = koprogo(
            "up", "--data-dir", "data", "--port", str(port), cwd=project, env=clean_env(), timeout=60
        )
    assert up.returncode == 1
    assert len(up.stderr.splitlines()) == 1, up.stderr
    assert f"port {port} is in use by another program" in up.stderr
    (retry,) = hints(up.stderr, " up --port ")
    assert retry.split()[-1] != str(port)
    assert not (project / "data" / "postgres").exists(), "nothing started"


def test_models_commands_work_on_the_stacks_models_folder(project: Path) -> None:
    env = clean_env(KOPROGO_MODELS_DIR=str(project / "models"))
    listed = koprogo("models", "list", cwd=project, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[-1] for line in listed.stdout.splitlines()[1:]}
    assert rows["llama3:8b-instruct-q4"] == "no" and rows["llama3:8b"] == "no"
    bundled = koprogo("models", "pull", "smollm2:135m-instruct-q4", cwd=project, env=env)
    assert bundled.returncode == 1 and "ships with the node" in bundled.stderr
    unknown = koprogo("models", "pull", "llama9:1t", cwd=project, env=env)
    assert unknown.returncode == 1 and "llama3:8b-instruct-q4" in unknown.stderr
    removed = koprogo("models", "rm", "phi-2:2.7b-q4", cwd=project, env=env)
    assert removed.returncode == 1 and f"is not in {project / 'models'}" in removed.stderr, removed.stderr


def test_a_node_of_another_machine_joins_a_running_stack_with_the_command_join_prints(
    project: Path, bundled_model_path: Path
) -> None:
    port, node_port = free_port(), free_port()
    env = clean_env()
    up = koprogo(
        "up", "--detach", "--no-demo", "--lan", "--data-dir", "data", "--port", str(port), cwd=project, env=env
    )  # fmt: skip
    node: subprocess.Popen[bytes] | None = None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        conf = (project / "data" / "nats" / "nats-server.conf").read_text()
        assert "host: 0.0.0.0" in conf and "http:" not in conf  # no monitoring port at all
        joined = koprogo(
            "node", "join", "--node-id", "pi-cave", "--model", "house-model", cwd=project, env=env
        )
        assert joined.returncode == 0, joined.stdout + joined.stderr
        assert "the running stack's NATS admits it now (checked with its key)" in joined.stdout
        # Step 4 of what it printed, run as printed, but here: the key where it lies, this
        # machine's loopback for its name, a GGUF for the placeholder, a free node port.
        (run,) = re.findall(
            r"`(NATS_URL=\S+ NATS_NKEY_SEED_FILE=\S+ NODE_ID=pi-cave "
            # the energy and device its key declares, the key its scheduler signs assignments with
            r"POWER_WATTS=7 INTENSITY_G_PER_KWH=150 DEVICE_CLASS=\S+ [^`]*GRID_SCHEDULER_PUBLIC_KEY=U\S+ "
            r"koprogo-node [^`]+)`",
            joined.stdout,
        )
        assert "-m /path/to/model.gguf --model-id house-model" in run  # not pullable: a file of one's own
        seed = project / "data" / "secrets" / "nats" / "nodes" / "pi-cave.nk"
        assert seed.is_file() and str(seed) in joined.stdout
        here = (
            re.sub(r"nats://[^:]+:", "nats://127.0.0.1:", run)
            .replace("~/.config/koprogo/node.nk", str(seed))
            .replace("/path/to/model.gguf", str(bundled_model_path))
        )
        node = subprocess.Popen(
            ["bash", "-c", f"{here} --port {node_port}"],  # bash execs a lone command
            env=env | {"PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}"},
        )
        dev = {"Authorization": f"Bearer {dev_token_path(project / 'data').read_text().strip()}"}
        body = {
            "model": "house-model",
            "messages": [{"role": "user", "content": "Bonjour"}],
            "context": f"copro:{DEMO_COPRO_ID}",
            "max_tokens": 8,
        }
        deadline = time.monotonic() + 90
        while True:
            chat = httpx.post(f"http://127.0.0.1:{port}/mcp/v1/chat", json=body, headers=dev, timeout=60)
            if chat.status_code == 200 or time.monotonic() > deadline:
                break
            assert node.poll() is None, "the joined node exited (refused by NATS?)"
            time.sleep(1)
        assert chat.status_code == 200, chat.text
        assert chat.json()["execution_info"]["node_id"] == "pi-cave"
    finally:
        if node is not None:
            node.terminate()
            node.wait(30)
        koprogo("down", cwd=project, env=env)


def test_a_killed_stacks_leftovers_are_named_by_up_and_stopped_by_down(project: Path) -> None:
    port = free_port()
    env = clean_env()
    up = koprogo(
        "up", "--detach", "--no-demo", "--data-dir", "data", "--port", str(port), cwd=project, env=env
    )
    assert up.returncode == 0, up.stdout + up.stderr
    record = running_stack(project / "data")
    assert record is not None and len(record.children) >= 7  # NATS, PostgreSQL, five services
    try:
        os.kill(record.pid, signal.SIGKILL)  # `up` dies at once: its children, in their own sessions, live on
        deadline = time.monotonic() + 10
        while running_stack(project / "data") is not None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        again = koprogo(
            "up", "--data-dir", "data", "--port", str(free_port()), cwd=project, env=env, timeout=60
        )
        assert again.returncode == 1 and len(again.stderr.splitlines()) == 1, again.stdout + again.stderr
        assert "processes of an earlier stack" in again.stderr and str(record.children[0]) in again.stderr
        (stop,) = hints(again.stderr, " down")
        down = run_shell(stop, project, env)
        assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
        assert not any(alive(pid) for pid in record.children)
    finally:
        for pid in record.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    restarted = koprogo(
        "up", "--detach", "--no-demo", "--data-dir", "data", "--port", str(port), cwd=project, env=env
    )
    try:
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    finally:
        koprogo("down", cwd=project, env=env)
