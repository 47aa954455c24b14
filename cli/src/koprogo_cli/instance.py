"""One stack per data folder: the lock a running `koprogo up` holds, and what it records.

`koprogo up` takes an exclusive `flock` on `<data>/koprogo.lock` for as long as it runs and
records in `<data>/koprogo.json` its pid, the gateway's URL, the pids of the processes it
started, its NATS server and its nodes (each record replaces the last by an atomic rename).
The kernel drops the lock when the process dies, however it dies, so a second `up` knows
for sure whether a stack is running on this folder (a pid file alone cannot tell a live
stack from a reused pid), and `down` knows what to stop: the stack itself, or the leftovers
of one that was killed before it could stop its children (its record outlives it). The lock
file itself is never deleted: a process could otherwise lock a file no longer in the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

DEFAULT_DATA_DIR = "data"
GATEWAY_PORT = 8080
DEFAULT_GATEWAY_URL = f"http://127.0.0.1:{GATEWAY_PORT}"


def data_dir_of(args: argparse.Namespace) -> Path:
    """The data folder a command works on: `--data-dir`, else $KOPROGO_DATA_DIR, else ./data."""
    return Path(args.data_dir or os.environ.get("KOPROGO_DATA_DIR", DEFAULT_DATA_DIR)).resolve()


@dataclass(frozen=True, slots=True)
class StackRecord:
    """What a running (or killed) `koprogo up` wrote about itself."""

    pid: int
    gateway_url: str = ""
    # The processes it started, in start order (servers first): what to stop if it died.
    children: list[int] = field(default_factory=list)
    # Its embedded nats-server (0 with NATS_URL), for `koprogo node join` to reload its users.
    nats_pid: int = 0
    nats_url: str = ""
    # Whether that server listens on every interface (`up --lan`), so other machines' nodes reach it.
    lan: bool = False
    # The edge nodes it runs itself, with their models (their NATS users).
    nodes: dict[str, list[str]] = field(default_factory=dict)
    # The cloud worker's deployments it started with (the cloud worker's NATS permissions).
    cloud_deployments: list[str] = field(default_factory=list)


def lock_path(data_dir: Path) -> Path:
    return data_dir / "koprogo.lock"


def record_path(data_dir: Path) -> Path:
    return data_dir / "koprogo.json"


# Another process may hold the lock for an instant to test it (`is_locked`): a start waits out that long.
ACQUIRE_TRIES = 10
ACQUIRE_PAUSE_S = 0.05


class StackLock:
    """The running stack's hold on its data folder; `acquire` fails while another holds it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = lock_path(data_dir)
        self.record_file = record_path(data_dir)
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "r+")
        for attempt in range(ACQUIRE_TRIES):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == ACQUIRE_TRIES - 1:
                    handle.close()
                    return False
                time.sleep(ACQUIRE_PAUSE_S)
        self._file = handle
        self.record(StackRecord(os.getpid()))
        return True

    def record(self, record: StackRecord) -> None:
        """Replace the record; readers see the old one or the new one, never a part (rename is atomic)."""
        assert self._file is not None, "record() before acquire()"
        partial = self.record_file.with_name(self.record_file.name + ".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(asdict(record)))
        os.replace(partial, self.record_file)

    def release(self) -> None:
        """After a clean stop: no record (nothing is left to stop), then the lock goes."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self.record_file.unlink()
        self._file.close()  # closing drops the flock
        self._file = None


def read_record(data_dir: Path) -> StackRecord | None:
    try:
        raw = json.loads(record_path(data_dir).read_text() or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("pid"), int):
        return None
    children = [p for p in raw.get("children", []) if isinstance(p, int)]
    nodes = raw.get("nodes", {})
    return StackRecord(
        raw["pid"],
        str(raw.get("gateway_url", "")),
        children,
        nats_pid=raw["nats_pid"] if isinstance(raw.get("nats_pid"), int) else 0,
        nats_url=str(raw.get("nats_url", "")),
        lan=raw.get("lan") is True,
        nodes={str(k): [str(m) for m in v] for k, v in nodes.items()} if isinstance(nodes, dict) else {},
        cloud_deployments=[str(d) for d in raw.get("cloud_deployments", []) if isinstance(d, str)],
    )


def folder_args(data_dir: Path) -> list[str]:
    """`--data-dir DIR` for a printed command, unless DIR is the folder commands find by default."""
    default = Path(os.environ.get("KOPROGO_DATA_DIR", DEFAULT_DATA_DIR)).resolve()
    return [] if data_dir == default else ["--data-dir", str(data_dir)]


def is_locked(data_dir: Path) -> bool:
    """Whether a live `koprogo up` holds this data folder."""
    path = lock_path(data_dir)
    try:
        handle = path.open("r")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def running_stack(data_dir: Path) -> StackRecord | None:
    """The stack running on `data_dir` now, or None."""
    if not is_locked(data_dir):
        return None
    return read_record(data_dir) or StackRecord(pid=0)


def alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (exited, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, not ours to signal
        return True
    return not zombie(pid)


def zombie(pid: int) -> bool:
    """Whether `pid` exited and waits to be reaped by its parent (its /proc state is `Z`).

    False for a process that is not there or whose state cannot be read."""
    try:
        # /proc/<pid>/stat: "pid (comm) state ..."; comm may hold spaces and parentheses.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state == "Z"


# The embedded servers' own pid files: they name a server even when the stack that started it
# was killed before it could record it.
SERVER_PID_FILES = ("nats/nats-server.pid", "postgres/pgdata/postmaster.pid")


def leftovers(data_dir: Path) -> list[int]:
    """Processes of a stack that died without stopping them (nothing while a stack holds the lock)."""
    if is_locked(data_dir):
        return []
    record = read_record(data_dir)
    recorded = record.children if record is not None else []
    servers = [pid for name in SERVER_PID_FILES if (pid := _pid_in(data_dir / name)) and pid not in recorded]
    return [pid for pid in [*servers, *recorded] if alive(pid) and _started_from(pid, data_dir)]


def _pid_in(path: Path) -> int:
    """The pid on the first line of a pid file, or 0."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _started_from(pid: int, data_dir: Path) -> bool:
    """Whether `pid` still is one of ours (a recycled pid belongs to another program).

    The servers carry the data folder in their arguments; the services, in their environment.
    """
    marker = str(data_dir).encode()
    for name in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
    return False


def terminate(pids: list[int], timeout: float = 20.0) -> list[int]:
    """SIGTERM each pid, last started first, each waited for; returns those still alive after `timeout`."""
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]
