"""Ports for the servers one machine runs: one free now, or the usual one when it is free.

Tests and `koprogo up` start several servers at once, each told its port before it binds it, so
`free_port` remembers the ports it gave (see `_GIVEN_PORTS`), and tells the other processes of the
same user (a test and the `koprogo up` it starts, which picks its services' ports itself) through
a folder of reservations (see `_reserve`); `preferred_port` keeps a service on its documented
port (4222, 5432, 8080...) when nothing else holds it, reserving it in the same folder with its pid.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import IO

__all__ = ["free_port", "port_free", "preferred_port"]

# The ports free_port() gave last in this process: a port is chosen free, released, and bound by its
# server only later, so the kernel may offer it again meanwhile (its choice is random: two calls a
# moment apart meet about once in 14,000). Told the same port, the second server fails to bind and
# its callers talk to the first (a test's gateway calls reached another service's ops server).
# Bounded: the kernel's odd ports (those bind(0) prefers) are ~14,000; the window that matters is
# seconds, the last thousands given cover it.
_GIVEN_PORTS: dict[int, None] = {}
_GIVEN_PORTS_KEPT = 4096
# Kernel choices tried before taking one given already: on a machine whose port range holds
# fewer free ports than the window keeps, every choice may be a given one.
_FREE_PORT_TRIES = 64
# Another process's port stays reserved this long: from its choice to its server's bind is seconds
# (a stack's services start within a minute); a port given longer ago is either bound (then the
# kernel does not offer it) or was never used.
_RESERVED_S = 120.0


def free_port() -> int:
    """A port free on 127.0.0.1 now, and none of the last ones this process gave nor one another
    process of this user gave in the last `_RESERVED_S`. When the kernel offers only such ports,
    `_FREE_PORT_TRIES` times over: one reserved elsewhere but not given here, else its last choice."""
    fallback = None
    for _ in range(_FREE_PORT_TRIES):
        port = _kernel_port()
        if port in _GIVEN_PORTS:
            continue
        if not _reserved_elsewhere(port):
            break
        fallback = fallback or port
    else:
        port = fallback or port
    _GIVEN_PORTS.pop(port, None)  # given again: kept as the newest
    _GIVEN_PORTS[port] = None
    if len(_GIVEN_PORTS) > _GIVEN_PORTS_KEPT:
        del _GIVEN_PORTS[next(iter(_GIVEN_PORTS))]
    return port


def _kernel_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Looked up once per temporary folder, not at every kernel offer (a test sets its own TMPDIR);
# a failed lookup is not remembered.
_FOLDERS: dict[str, Path] = {}


def _reservations() -> Path | None:
    """This user's folder of reservations, None when there is none to share (no usable temporary
    folder, or the folder is not this user's own: anyone may create a name in /tmp)."""
    try:
        tmp = tempfile.gettempdir()
    except OSError:
        return None
    if tmp not in _FOLDERS:
        folder = _reservations_in(tmp)
        if folder is None:
            return None  # asked again at the next call
        _FOLDERS[tmp] = folder
    return _FOLDERS[tmp]


def _reservations_in(tmp: str) -> Path | None:
    try:
        folder = Path(tmp) / f"koprogo-ports-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        if folder.stat().st_uid != os.getuid():
            return None
    except OSError:
        return None
    return folder


def _reserved_elsewhere(port: int) -> bool:
    """Whether another process reserved `port` within `_RESERVED_S`; if not, reserve it now, with
    an empty reservation (a port handed to a server this process starts: it stands its window
    whoever lives)."""
    return not _reserve(port, "")


def _reserve(port: int, holder: str) -> bool:
    """Reserve `port` for `holder` (empty, or this process's pid) unless a standing reservation
    holds it (see `_stands`); True when reserved here. The reservation is a file named by the
    port, read and written under an exclusive lock on the folder's `.lock`, so of several
    processes after the same port, free or stale, one gets it. No folder to share, or one that
    fails: this process's own memory is the only guard, as before the folder existed."""
    folder = _reservations()
    if folder is None:
        return True
    path = folder / str(port)
    try:
        with open(folder / ".lock", "a") as lock:
            if not _locked(lock):
                return True
            if folder not in _PRUNED:
                _prune(folder)
                _PRUNED.add(folder)
            try:
                if _stands(path.read_bytes(), path.stat().st_mtime, holder):
                    return False
            except FileNotFoundError:
                pass
            path.write_text(holder)
            os.utime(path)  # a stale empty one rewritten empty: its age starts again
            return True
    except FileNotFoundError:  # the folder was removed meanwhile: made again at the next call
        _FOLDERS.clear()
        return True
    except OSError:
        return True


# Holders keep the lock for a few system calls; one held this long is held by a process stopped
# (or a child forked without exec while another thread held it): go on without the folder.
_LOCK_WAIT_S = 5.0


def _locked(lock: IO[str]) -> bool:
    """Take the exclusive lock on `lock` (released when the file is closed); False when it stays
    held for `_LOCK_WAIT_S`."""
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)


# The folders this process has pruned: once per process (a test session, a `koprogo up`), so the
# folder holds about the reservations of the last window rather than every port ever given.
_PRUNED: set[Path] = set()


def _prune(folder: Path) -> None:
    """Remove the reservations older than `_RESERVED_S` (they hold nothing) and the leftovers of
    the earlier scheme's renames (`<port>.<pid>.old`); called with the folder's lock held, so no
    reservation being written is removed."""
    now = time.time()
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name == ".lock":
                continue
            try:
                if now - entry.stat().st_mtime >= _RESERVED_S:
                    os.unlink(entry.path)
            except OSError:
                pass  # removed meanwhile by a process of the earlier scheme, or not ours to remove


def _stands(found: bytes, mtime: float, holder: str) -> bool:
    """Whether a reservation holding `found`, written at `mtime`, keeps its port from `holder`:
    younger than `_RESERVED_S`, and either empty (`free_port`'s) or the pid of a live process,
    other than `holder`'s own (`preferred_port` takes its own documented ports again; `free_port`
    does not give them). Anything else (a process that ended, bytes that are no pid) is stale."""
    if time.time() - mtime >= _RESERVED_S:
        return False
    if not found:
        return True
    if not found.isdigit() or len(found) > 10:
        return False
    pid = int(found)
    if pid == os.getpid():
        return found != holder.encode()
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    except OverflowError:
        return False
    return True


def port_free(port: int) -> bool:
    with socket.socket() as s:
        # As uvicorn binds: a port whose last server died with connections open (TIME_WAIT) is
        # free to it, so it is free here too (a stack killed and started again at once).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def preferred_port(port: int) -> int:
    """`port` when it is free and no other live process of this user chose it within
    `_RESERVED_S` (two stacks started at once both found 8084 free; the second's grid scheduler
    failed to bind it); else `free_port()`. A stack started again, by this process or after the
    last one's process ended, takes its documented port again."""
    return port if port_free(port) and _reserve(port, str(os.getpid())) else free_port()
