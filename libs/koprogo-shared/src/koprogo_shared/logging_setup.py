"""Logging set up the same way in every service: one line per record, ids never contents.

By default records go to stderr. With `LOG_FILE` in the environment (`koprogo up` sets it
for each service) they go to that file instead, rotated by size: `LOG_MAX_BYTES` (default
10 MB) per file, `LOG_BACKUP_COUNT` (default 5) older files kept as `<file>.1` ... `<file>.5`.
Every log file is created readable by its owner only (0600), rotated ones too: a log can
hold user ids, model names and paths, which other accounts on a shared Pi need not read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO, Any

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUP_COUNT = 5
PRIVATE_FILE_MODE = 0o600


def _private_opener(path: str, flags: int) -> int:
    """`open()`'s opener: create with 0600, and bring an existing file (an older run's) to 0600 too."""
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)
    return fd


def open_private_log(path: Path) -> IO[bytes]:
    """Open `path` for appending, mode 0600 whether it is new or not, its folder made if missing.

    For what a child process writes to its stdout/stderr (tracebacks, C libraries' prints):
    pass the file as the child's `stdout`/`stderr`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab", opener=_private_opener)  # the caller closes it (a `with` block)


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler whose current and rotated files are all mode 0600."""

    def _open(self) -> Any:
        return open(
            self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors, opener=_private_opener
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: expected a whole number") from None
    if value <= 0:
        raise SystemExit(f"{name}={raw!r}: expected a number above 0")
    return value


def log_handler(env: Mapping[str, str] | None = None) -> logging.Handler:
    """The handler `configure_logging` installs: `LOG_FILE`, rotated, when set; stderr otherwise."""
    env = os.environ if env is None else env
    log_file = env.get("LOG_FILE", "").strip()
    if not log_file:
        return logging.StreamHandler()
    path = Path(log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    return PrivateRotatingFileHandler(
        path,
        maxBytes=_positive_int(env, "LOG_MAX_BYTES", DEFAULT_MAX_BYTES),
        backupCount=_positive_int(env, "LOG_BACKUP_COUNT", DEFAULT_BACKUP_COUNT),
        encoding="utf-8",
    )


def configure_logging(level: str, service: str, env: Mapping[str, str] | None = None) -> None:
    """Send every record (uvicorn's too, when it runs with `log_config=None`) to one handler."""
    handler = log_handler(env)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    # force: a library that logged before this call (and so installed a default handler) must
    # not keep a second destination.
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
