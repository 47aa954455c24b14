"""After `koprogo up --detach` and `koprogo down`: every log is private, holds no secret, and a
normal stop writes no warning into any of them. While it runs, each service's environment holds
only the secrets it uses (the signing secret in none: the gateway gets its file), and the
embedded nats-server serves no monitoring port."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import httpx

from koprogo_cli.dev_auth import dev_token_path, jwt_secret_path
from koprogo_cli.instance import record_path
from koprogo_cli.ports import free_port
from tests.conftest import postgres_dir
from tests.e2e.test_koprogo_up import koprogo

SERVICES = ("gateway", "router", "ledger", "cloud", "edge-node")
# The services that read PostgreSQL, and so get its password (in DATABASE_URL).
DATABASE_USERS = {"koprogo-ledger", "koprogo-gateway"}
# Ours (`... ledger WARNING name: ...`), Python's bare tracebacks, nats-server's `[WRN]`/`[ERR]`/
# `[FTL]`, PostgreSQL's `WARNING:`/`ERROR:`/`FATAL:`/`PANIC:`.
TROUBLE = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback|\[(WRN|ERR|FTL)\]|\b(WARNING|ERROR|FATAL|PANIC):")


def test_up_and_down_leave_private_logs_without_secrets_and_a_quiet_stop() -> None:
    with postgres_dir() as folder:  # `koprogo up` keeps an embedded PostgreSQL in its data folder
        data = folder / "data"
        sizes_before_stop = up_use_down(data)
        assert_logs_are_private_and_clean(data)
        assert_the_stop_logged_no_warning(data, sizes_before_stop)


def up_use_down(data: Path) -> dict[Path, int]:
    """Start, use the dev token once, stop; the size of every log just before the stop."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL", "JWT_SECRET", "JWKS_URL", "LOG_FILE")
        and not k.startswith("CONTENT_KEY")
    }
    port = free_port()
    sizes: dict[Path, int] = {}
    try:
        # With the demo chat: its curl line and its answer go to the detached run's log.
        up = koprogo("up", "--detach", "--data-dir", str(data), "--port", str(port), env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert_services_hold_only_their_secrets(data)
        assert_nats_monitoring_is_off(data)
        # The dev token in use, so every hop that could log it has seen it.
        token = dev_token_path(data).read_text().strip()
        models = httpx.get(
            f"http://127.0.0.1:{port}/mcp/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert models.status_code == 200, models.text
        sizes = {path: path.stat().st_size for path in log_files(data)}
    finally:
        down = koprogo("down", "--data-dir", str(data), env=env)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    return sizes


def log_files(data: Path) -> list[Path]:
    """Every log the stack writes: its own, each service's, nats-server's and PostgreSQL's."""
    found = [data / "koprogo.log", *sorted((data / "logs").iterdir())]
    found += sorted((data / "nats").glob("nats-server*.log*"))
    found += [data / "postgres" / "postgres.log", *sorted((data / "postgres" / "log").iterdir())]
    return found


def assert_logs_are_private_and_clean(data: Path) -> None:
    logs = log_files(data)
    names = {p.name for p in logs}
    for service in SERVICES:
        assert {f"{service}.log", f"{service}.stderr.log"} <= names, names
    assert {"nats-server.log", "postgres.log"} <= names, names
    assert any(name.startswith("postgresql-") for name in names), names
    secrets = {
        "the dev token": dev_token_path(data).read_text().strip(),
        "the JWT secret": jwt_secret_path(data).read_text().strip(),
        "the PostgreSQL password": postgres_password(data),
    }
    problems = []
    for path in logs:
        if (mode := stat.S_IMODE(path.stat().st_mode)) != 0o600:
            problems.append(f"{path}: mode {mode:o}")
        text = path.read_text(errors="replace")
        problems += [f"{path}: holds {what}" for what, secret in secrets.items() if secret in text]
    assert problems == [], "\n".join(problems)


def assert_the_stop_logged_no_warning(data: Path, sizes_before_stop: dict[Path, int]) -> None:
    stop_lines: dict[str, list[str]] = {}
    for path in log_files(data):
        with path.open("rb") as f:
            f.seek(sizes_before_stop.get(path, 0))
            stop_lines[path.name] = f.read().decode(errors="replace").splitlines()
    for service in SERVICES:
        # The stop was logged (so these lines are the stop's), at INFO: the service closed NATS itself.
        closed = [line for line in stop_lines[f"{service}.log"] if "nats connection closed" in line]
        assert closed and all(" INFO " in line for line in closed), stop_lines[f"{service}.log"]
    assert any("Server Exiting" in line for line in stop_lines["nats-server.log"])
    trouble = [
        f"{name}: {line}" for name, lines in stop_lines.items() for line in lines if TROUBLE.search(line)
    ]
    assert trouble == [], "\n".join(trouble)


def postgres_password(data: Path) -> str:
    path = data / "secrets" / "postgres-password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path.read_text().strip()


def assert_services_hold_only_their_secrets(data: Path) -> None:
    """No process of the stack has the signing secret in its environment; the PostgreSQL password
    only the ledger and the gateway (their DATABASE_URL)."""
    jwt_secret = jwt_secret_path(data).read_text().strip()
    password = postgres_password(data)
    children = json.loads(record_path(data).read_text())["children"]
    seen, problems = set(), []
    for pid in children:
        program = Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()).name
        if program.startswith("python"):  # a service run by its interpreter: the script is next
            program = Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1].decode()).name
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
        names = {entry.partition("=")[0] for entry in environ}
        seen.add(program)
        if jwt_secret in "\n".join(environ) or "JWT_SECRET" in names:
            problems.append(f"{program} ({pid}) has the signing secret in its environment")
        has_password = password in "\n".join(environ)
        if has_password and program not in DATABASE_USERS:
            problems.append(f"{program} ({pid}) has the PostgreSQL password, and no use for it")
        if program in DATABASE_USERS and not has_password:
            problems.append(f"{program} ({pid}) lacks the PostgreSQL password it connects with")
    assert DATABASE_USERS <= seen, seen
    assert problems == [], "\n".join(problems)


def assert_nats_monitoring_is_off(data: Path) -> None:
    conf = (data / "nats" / "nats-server.conf").read_text()
    assert not re.search(r"^\s*(http|http_port|https)\s*:", conf, re.MULTILINE), conf
    assert "http monitor" not in (data / "nats" / "nats-server.log").read_text()
