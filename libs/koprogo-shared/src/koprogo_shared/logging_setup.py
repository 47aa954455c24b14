"""Logging set up the same way in every service: one line per record, ids never contents.

By default records go to stderr. With `LOG_FILE` in the environment (`koprogo up` sets it
for each service) they go to that file instead, rotated by size: `LOG_MAX_BYTES` (default
10 MB) per file, `LOG_BACKUP_COUNT` (default 5) older files kept as `<file>.1` ... `<file>.5`.
Every log file is created readable by its owner only (0600), rotated ones too: a log can
hold user ids, model names and paths, which other accounts on a shared Pi need not read.

`LOG_FORMAT` chooses the line: `text` (the default, for a person at a terminal or reading
`logs/<service>.log`) or `json`, one object per line for a log collector:
`{"time", "level", "service", "logger", "message", "trace_id", "span_id", "exc", ...}`; trace_id
and span_id are the current OpenTelemetry span's, when there is one, so a request's records are
found from its `traceparent`. In both formats `RedactSecrets` masks anything shaped like a
credential (a JWT, an `Authorization` value, an nkey seed, an API key, a URL's password) before the
line is written: a safety net under the rule that log calls name ids and sizes, never a message's
contents or a token.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from opentelemetry import trace
from pydantic import ValidationError

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUP_COUNT = 5
PRIVATE_FILE_MODE = 0o600
LOG_FORMATS = ("text", "json")
REDACTED = "[REDACTED]"


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


def log_format(env: Mapping[str, str] | None = None) -> str:
    """`LOG_FORMAT`: `text` (also when unset) or `json`; anything else stops the service, named."""
    env = os.environ if env is None else env
    raw = env.get("LOG_FORMAT", "").strip()
    if not raw:
        return "text"
    if raw.lower() not in LOG_FORMATS:
        raise SystemExit(f"LOG_FORMAT={raw!r}: expected text or json")
    return raw.lower()


# What looks like a credential, whatever the log call meant to write. A header's or field's name,
# "Bearer " and a URL up to its password stay (groups `header`, `bearer`, `userinfo`), so the line
# still says what was there.
_SECRETS = re.compile(
    r"""
    (?P<header>(?i:\b(?:proxy-)?authorization|\bx-api-key|api[_-]?key|password|secret)
        ["']?\s*[:=]\s*["']?)
      (?i:(?:bearer|basic|digest|token)\s+)?[^\s"',;&}]+
    | (?P<bearer>(?i:\bbearer)\s+)[A-Za-z0-9._~+/=-]+
    | \beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*     # a JWT (its header is base64 '{"')
    | \bS[UAONCPX][A-Z2-7]{56}\b                             # an nkey seed (user, account, ...)
    | \bsk-[A-Za-z0-9_-]{16,}                                 # OpenAI sk-..., Anthropic sk-ant-...
    | (?P<userinfo>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(?=@)   # a URL's password
    """,
    re.VERBOSE,
)


def _masked(found: re.Match[str]) -> str:
    kept = found.group("header") or found.group("bearer") or found.group("userinfo") or ""
    return kept + REDACTED


# Every credential `_SECRETS` finds holds one of these (lower-cased), or is an nkey seed. Most
# lines hold none and skip the regex: 1 us instead of 8 for a line of 80 characters.
_HINTS = ("eyj", "sk-", "://", "authorization", "bearer", "api", "password", "secret")
_NKEY_SEED = re.compile(r"S[UAONCPX][A-Z2-7]{56}")


def mask_secrets(text: str) -> str:
    """`text` with every credential-shaped part replaced by `REDACTED`."""
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS) and not _NKEY_SEED.search(text):
        return text
    return _SECRETS.sub(_masked, text)


def invalid_fields(exc: ValidationError, most: int = 5) -> str:
    """What a log line may say of a payload that failed validation: its failing fields and the
    error types, never the values (pydantic's own message quotes them: a user's message, a task's
    document)."""
    shown = [
        ".".join(str(part) for part in error["loc"]) + f" ({error['type']})"
        for error in exc.errors(include_url=False, include_input=False)[:most]
    ]
    more = exc.error_count() - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


# Provider SDKs that write a whole request (the user's messages) at DEBUG: kept at INFO or above
# whatever LOG_LEVEL says (their own ANTHROPIC_LOG/OPENAI_LOG variables can still lower them).
PAYLOAD_LOGGERS = ("anthropic", "openai")


# The attributes every LogRecord has: any other attribute came from a call's `extra=`.
# `color_message` is uvicorn's ANSI-coloured copy of its message, never wanted in a log file.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_TRACEBACKS = logging.Formatter()


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES}


class RedactSecrets(logging.Filter):
    """Masks credentials in a record's message, `extra=` strings, traceback and stack, for every
    handler format. On the handler, so it runs only for records that pass the level."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The message is formatted once here and kept: the formatter does not format it again.
        record.msg, record.args = mask_secrets(record.getMessage()), None
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, mask_secrets(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


def _rfc3339(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _simple(value: object) -> bool:
    # Only values a collector can index; an object's repr could carry anything (a whole request).
    return (
        value is None
        or isinstance(value, str | int | bool)
        or (isinstance(value, float) and math.isfinite(value))
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message or traceback are escaped)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _rfc3339(record),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Handlers run in the logging call's thread and context, so this is the caller's span.
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = trace.format_trace_id(span.trace_id)
            entry["span_id"] = trace.format_span_id(span.span_id)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in _extras(record).items():
            if key not in entry and _simple(value):
                entry[key] = value
        return json.dumps(entry, ensure_ascii=False)


def log_formatter(service: str, env: Mapping[str, str] | None = None) -> logging.Formatter:
    """The formatter `LOG_FORMAT` names (`text` unless set)."""
    if log_format(env) == "json":
        return JsonFormatter(service)
    return logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")


def service_handler(service: str, env: Mapping[str, str] | None = None) -> logging.Handler:
    """The handler `configure_logging` installs: `log_handler`'s destination, `LOG_FORMAT`'s
    lines, credentials masked."""
    formatter = log_formatter(service, env)  # first: a bad LOG_FORMAT stops before any file is made
    handler = log_handler(env)
    handler.setFormatter(formatter)
    handler.addFilter(RedactSecrets())
    return handler


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("uncaught").critical(
        "the process stops on %s", kind.__name__, exc_info=(kind, value, tb)
    )


def configure_logging(level: str, service: str, env: Mapping[str, str] | None = None) -> None:
    """Send every record (uvicorn's too, when it runs with `log_config=None`) to one handler."""
    handler = service_handler(service, env)
    # force: a library that logged before this call (and so installed a default handler) must
    # not keep a second destination.
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))
    if isinstance(handler.formatter, JsonFormatter):
        # The traceback of a crash as one JSON line too (masked), not bare lines a collector splits.
        sys.excepthook = _log_uncaught
