"""The embedded PostgreSQL trusts no one: every connection, its socket included, gives the password,
which lives in a private file; a data folder made with `trust` by an earlier version is switched
over at its next start and keeps its data. And the embedded nats-server runs no monitoring port."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from koprogo_cli.embedded import EmbeddedServerError
from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.embedded_pg import EmbeddedPostgres, _open_path_to, _pg_bin, _run_as
from koprogo_cli.ports import free_port
from tests.conftest import postgres_dir


@pytest.fixture
def pg_folder() -> Iterator[Path]:
    with postgres_dir() as folder:
        yield folder


async def refused(port: int, **credentials: str) -> str:
    """How a connection as `postgres` with these credentials is refused ("" if it is not)."""
    try:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", database="postgres", **credentials
        )
    except asyncpg.InvalidPasswordError as exc:
        return str(exc)
    await conn.close()
    return ""


def psql_on_socket(server: EmbeddedPostgres, os_user: str | None = None) -> subprocess.CompletedProcess[str]:
    """psql over the server's own socket, as `postgres`, without a password (`-w`: never prompt)."""
    argv = [_pg_bin("psql"), "-h", str(server.data_dir / "sockets"), "-p", str(server.port)]
    return subprocess.run(
        [*argv, "-U", "postgres", "-d", "postgres", "-w", "-tAc", "SELECT 1"],
        capture_output=True, text=True, user=os_user, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip


async def test_a_fresh_server_refuses_every_connection_without_its_password(pg_folder: Path) -> None:
    server = EmbeddedPostgres(pg_folder / "pg", port=free_port(), database="postgres").start()
    try:
        assert await refused(server.port) != "", "no password, and let in"
        assert await refused(server.port, password="postgres") != ""
        on_socket = psql_on_socket(server)
        assert on_socket.returncode != 0 and "no password supplied" in on_socket.stderr, on_socket.stderr
        # With the URL (the password from its file), in.
        conn = await asyncpg.connect(server.url)
        assert await conn.fetchval("SELECT current_user") == "postgres"
        await conn.close()
        assert server.secret_path.read_text().strip() in server.url
        assert "@" in server.public_url and server.secret_path.read_text().strip() not in server.public_url
        assert stat.S_IMODE(server.secret_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.secret_path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE((server.data_dir / "sockets").stat().st_mode) == 0o700
    finally:
        server.stop()


async def test_another_account_of_the_machine_cannot_reach_the_socket(pg_folder: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("run as root here: the test switches to another account (nobody) to try the socket")
    server = EmbeddedPostgres(pg_folder / "pg", port=free_port(), database="postgres").start()
    try:
        as_nobody = psql_on_socket(server, os_user="nobody")
        assert as_nobody.returncode != 0 and "Permission denied" in as_nobody.stderr, as_nobody.stderr
    finally:
        server.stop()


def initdb_with_trust(data_dir: Path) -> None:
    """A data folder as earlier versions made it: `initdb --auth=trust`."""
    data_dir.mkdir()
    user = _run_as()
    if user:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
        _open_path_to(data_dir)  # the server's account traverses the parents, as `start` arranges
    initdb = [_pg_bin("initdb"), "-D", str(data_dir / "pgdata"), "-U", "postgres", "--auth=trust"]
    subprocess.run([*initdb, "--no-instructions"], check=True, user=user, capture_output=True)


async def test_a_data_folder_made_with_trust_gets_a_password_and_keeps_its_data(pg_folder: Path) -> None:
    data_dir = pg_folder / "pg"
    initdb_with_trust(data_dir)
    password_file = pg_folder / "secrets" / "postgres-password"
    server = EmbeddedPostgres(
        data_dir, port=free_port(), database="koprogo", password_file=password_file
    ).start()
    try:
        assert await refused(server.port) != "", "still trusting after the upgrade"
        conn = await asyncpg.connect(server.url)
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before restart')")
        await conn.close()
    finally:
        server.stop()
    hba = (data_dir / "pgdata" / "pg_hba.conf").read_text()
    assert "trust" not in [
        line.split()[-1] for line in hba.splitlines() if line.split() and not line.startswith("#")
    ]
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    again = EmbeddedPostgres(
        data_dir, port=free_port(), database="koprogo", password_file=password_file
    ).start()
    try:
        conn = await asyncpg.connect(again.url)
        assert await conn.fetchval("SELECT v FROM kept") == "before restart"
        await conn.close()
        assert await refused(again.port) != ""
    finally:
        again.stop()


async def test_a_lost_password_file_is_named_with_the_way_out_and_the_way_out_works(pg_folder: Path) -> None:
    server = EmbeddedPostgres(pg_folder / "pg", port=free_port(), database="postgres").start()
    server.stop()
    server.secret_path.unlink()
    with pytest.raises(EmbeddedServerError, match="local all postgres trust") as refusal:
        EmbeddedPostgres(pg_folder / "pg", port=free_port(), database="postgres").start()
    # The way out it names: that one line in pg_hba.conf, and a start sets a new password.
    hba = pg_folder / "pg" / "pgdata" / "pg_hba.conf"
    assert str(hba) in str(refusal.value)
    hba.write_text("local all postgres trust\n")
    again = EmbeddedPostgres(pg_folder / "pg", port=free_port(), database="postgres").start()
    try:
        conn = await asyncpg.connect(again.url)
        await conn.close()
        assert await refused(again.port) != ""
    finally:
        again.stop()


def test_the_embedded_nats_server_runs_no_monitoring_port_unless_asked(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    server.stop()
    log = (tmp_path / "nats" / "nats-server.log").read_text()
    assert "Server is ready" in log and "http monitor" not in log, log
    asked = free_port()
    server = EmbeddedNats(tmp_path / "nats-monitored", port=free_port(), monitor_port=asked).start()
    server.stop()
    log = (tmp_path / "nats-monitored" / "nats-server.log").read_text()
    assert f"Starting http monitor on 127.0.0.1:{asked}" in log, log
