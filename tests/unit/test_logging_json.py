"""LOG_FORMAT=json: one JSON object per line with the current span's ids; credentials masked in
every format; the text line of before when LOG_FORMAT is unset; a bad LOG_FORMAT refused.

Each case writes through `service_handler` (what `configure_logging` installs on the root logger)
attached to a logger of its own, so pytest's capture on the root logger is left alone; the one
case about uvicorn's loggers runs `configure_logging` in a fresh interpreter, as a service does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nkeys
import pytest
from opentelemetry.sdk.trace import TracerProvider

from koprogo_grid.adapters.kv_store import KeyValueTaskStore
from koprogo_shared.logging_setup import REDACTED, configure_logging, mask_secrets, service_handler
from tests.token_support import token

RFC3339_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} gateway INFO test\.logs\.\w+: chat r-1 answered$"
)


ServiceLog = Callable[[dict[str, str]], tuple[logging.Logger, Path]]


@pytest.fixture
def service_log(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServiceLog]:
    """Make a logger writing through the service's handler, built from `env` (LOG_FILE set here)."""
    made: list[tuple[logging.Logger, logging.Handler]] = []

    def make(env: dict[str, str]) -> tuple[logging.Logger, Path]:
        path = tmp_path / f"gateway-{len(made)}.log"
        handler = service_handler("gateway", {**env, "LOG_FILE": str(path)})
        logger = logging.getLogger(f"test.logs.{request.node.originalname}_{len(made)}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(handler)
        made.append((logger, handler))
        return logger, path

    yield make
    for logger, handler in made:
        logger.removeHandler(handler)
        handler.close()


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines]


JSON = {"LOG_FORMAT": "json"}


def test_a_record_in_a_span_carries_its_trace_and_span_ids(service_log: ServiceLog) -> None:
    log, path = service_log(JSON)
    # A provider of the test's own: the span is current through the context, not a global provider.
    tracer = TracerProvider().get_tracer("test")
    log.info("before any span")
    with tracer.start_as_current_span("POST /mcp/v1/chat") as span:
        log.info("chat %s answered", "r-1")
        context = span.get_span_context()
    outside, inside = json_lines(path)
    assert "trace_id" not in outside and "span_id" not in outside
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"


def test_each_line_is_one_json_object_with_the_fields(service_log: ServiceLog) -> None:
    log, path = service_log(JSON)
    log.warning("two\nlines for %s", "r-2", extra={"request_id": "r-2", "tokens": 48, "node": None})
    log.info("an object is not copied", extra={"request": {"messages": ["hello"]}, "ratio": float("nan")})
    log.debug("below the level")
    lines = path.read_text().splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert RFC3339_UTC_MS.match(first["time"]), first["time"]
    assert first | {"time": None} == {
        "time": None,
        "level": "WARNING",
        "service": "gateway",
        "logger": log.name,
        "message": "two\nlines for r-2",
        "request_id": "r-2",
        "tokens": 48,
        "node": None,
    }
    # Only simple values are copied: an object's repr could be a whole request, NaN is not JSON.
    assert "request" not in second and "ratio" not in second
    assert second["message"] == "an object is not copied"


def test_an_exception_is_in_the_line_as_its_traceback(service_log: ServiceLog) -> None:
    log, path = service_log(JSON)
    prices: dict[str, float] = {}
    try:
        prices["missing"]
    except KeyError:
        log.exception("lookup of %s failed", "r-3")
    (line,) = path.read_text().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["message"] == "lookup of r-3 failed"
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert entry["exc"].endswith("KeyError: 'missing'")


def credentials() -> dict[str, str]:
    """One of each kind, real: a gateway JWT, a NATS user and account seed, provider API keys,
    and secrets that are credentials only by where they stand (a header, a URL)."""
    return {
        "jwt": token(user="user-secret-holder"),
        "user seed": nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode(),
        "account seed": nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT).decode(),
        "openai key": "sk-proj-" + secrets.token_urlsafe(36),
        "anthropic key": "sk-ant-api03-" + secrets.token_urlsafe(70),
        "opaque bearer": secrets.token_urlsafe(24),
        "basic credentials": secrets.token_urlsafe(18),
        "api key header": secrets.token_hex(16),
        "url password": secrets.token_urlsafe(18),
        "password field": secrets.token_urlsafe(18),
        "secret field": secrets.token_urlsafe(18),
    }


# How a line carries each kind, and what is left of it: the bare secret otherwise.
PLACED = {
    "opaque bearer": ("sent Bearer {} (kept)", "sent Bearer [REDACTED] (kept)"),
    "basic credentials": ("Authorization: Basic {} (kept)", "Authorization: [REDACTED] (kept)"),
    "api key header": ("X-Api-Key: {} (kept)", "X-Api-Key: [REDACTED] (kept)"),
    "password field": ("dsn host=db password={} (kept)", "dsn host=db password=[REDACTED] (kept)"),
    "secret field": ('{{"client_secret": "{}"}} (kept)', '{"client_secret": "[REDACTED]"} (kept)'),
    "url password": (
        "nats://koprogo:{}@127.0.0.1:4222 (kept)",
        "nats://koprogo:[REDACTED]@127.0.0.1:4222 (kept)",
    ),
}


@pytest.mark.parametrize(
    "fmt", [pytest.param({"LOG_FORMAT": "json"}, id="json"), pytest.param({}, id="text")]
)
def test_credentials_are_masked_in_message_extras_and_traceback(
    service_log: ServiceLog, fmt: dict[str, str]
) -> None:
    found = credentials()
    log, path = service_log(fmt)
    log.warning("headers %r", {"Authorization": f"Bearer {found['opaque bearer']}"})
    log.warning("token %s seeds %s %s", found["jwt"], found["user seed"], found["account seed"])
    log.warning("call failed", extra={"api_key_seen": found["openai key"]})
    try:
        raise RuntimeError(f"provider refused key {found['anthropic key']}")
    except RuntimeError:
        log.exception("cloud call failed")
    written = path.read_text()
    leaked = [kind for kind, value in found.items() if value in written]
    assert leaked == [], written
    # The text line shows no extras; the JSON line has the extra, masked.
    assert written.count(REDACTED) == (6 if fmt else 5), written
    assert "'Authorization': '[REDACTED]'" in written  # the header's name stays: the line still reads
    assert "RuntimeError: provider refused key [REDACTED]" in written


@pytest.mark.parametrize("kind", list(credentials()))
def test_each_kind_of_credential_is_masked_alone(kind: str) -> None:
    line, masked = PLACED.get(kind, ("got {} (kept)", f"got {REDACTED} (kept)"))
    assert mask_secrets(line.format(credentials()[kind])) == masked


@pytest.mark.parametrize(
    "line",
    [
        "chat 0f9c2d1e-7b9a-4c1e-9d2f-1a2b3c4d5e6f answered for user user-1 (48 tokens)",
        "connected to nats://127.0.0.1:4222 and postgresql://koprogo@127.0.0.1:5432/koprogo",
        "PostgreSQL (embedded, scram-sha-256, password in /data/secrets/postgres-password)",
        "tokens checked with the HS256 secret; api_key_env unset; sk-learn is not a key",
        "SUBSCRIBED TO KOPROGO EVENTS",
    ],
)
def test_ordinary_lines_are_left_alone(line: str) -> None:
    assert mask_secrets(line) == line


def test_without_log_format_the_text_line_is_unchanged(service_log: ServiceLog) -> None:
    log, path = service_log({})
    log.info("chat %s answered", "r-1")
    (line,) = path.read_text().splitlines()
    assert TEXT_LINE.match(line), line


@pytest.mark.parametrize("value", ["xml", "JSONL", "1"])
def test_a_bad_log_format_is_refused_with_the_variable_named(tmp_path: Path, value: str) -> None:
    log_file = tmp_path / "gateway.log"
    with pytest.raises(SystemExit, match=f"LOG_FORMAT='{value}': expected text or json"):
        configure_logging("INFO", "gateway", {"LOG_FORMAT": value, "LOG_FILE": str(log_file)})
    assert not log_file.exists()


UVICORN = textwrap.dedent(
    """
    import logging
    from koprogo_shared.logging_setup import configure_logging

    configure_logging("INFO", "gateway")
    # What uvicorn does at start, its loggers propagating to the root (log_config=None).
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]", 42, extra={"color_message": "Started server process [\\x1b[36m%d\\x1b[0m]"}
    )
    """
)


def test_uvicorns_records_go_through_the_json_handler(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOG_")}
    env |= {"LOG_FORMAT": "json", "LOG_FILE": str(tmp_path / "gateway.log")}
    subprocess.run([sys.executable, "-c", UVICORN], env=env, check=True, timeout=60)
    (entry,) = json_lines(tmp_path / "gateway.log")
    assert entry["logger"] == "uvicorn.error" and entry["message"] == "Started server process [42]"
    assert "color_message" not in entry


PROVIDER_DEBUG = textwrap.dedent(
    """
    import logging
    from koprogo_shared.logging_setup import configure_logging

    configure_logging("DEBUG", "cloud")
    logging.getLogger("koprogo_cloud.adapters").debug("calling deployment local-openai")
    # What the Anthropic SDK writes at DEBUG: the whole request, the user's messages in it.
    logging.getLogger("anthropic._base_client").debug(
        "Request options: %s", {"json_data": {"messages": [{"role": "user", "content": "my landlord's name"}]}}
    )
    logging.getLogger("openai._base_client").info("HTTP Request: POST /v1/chat/completions")
    """
)


def test_log_level_debug_never_lets_a_provider_sdk_write_the_request(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOG_")}
    env |= {"LOG_FORMAT": "json", "LOG_FILE": str(tmp_path / "cloud.log")}
    subprocess.run([sys.executable, "-c", PROVIDER_DEBUG], env=env, check=True, timeout=60)
    messages = [entry["message"] for entry in json_lines(tmp_path / "cloud.log")]
    assert messages == ["calling deployment local-openai", "HTTP Request: POST /v1/chat/completions"]


class OneValueWatch:
    """A key-value bucket's watch that holds one entry (what `KeyValue.watchall` returns)."""

    def __init__(self, key: str, value: bytes) -> None:
        # The bucket's only message: nothing pending after it (`delta` 0), a put (no operation).
        self.entries: list[Any] = [SimpleNamespace(key=key, value=value, delta=0, operation=None), None]

    async def watchall(self, **_: Any) -> OneValueWatch:
        return self

    async def updates(self, timeout: float) -> Any:
        return self.entries.pop(0)

    async def stop(self) -> None:
        return None


async def test_an_unreadable_task_state_is_logged_by_its_fields_never_its_contents(
    caplog: pytest.LogCaptureFixture,
) -> None:
    document = "Facture 2026-114, Mme Dupont, 1 234,56 EUR"
    stored = json.dumps({"task_id": "t-1", "task": {"parameters": {"text": document}}, "attempt": "first"})
    store = KeyValueTaskStore(OneValueWatch("t-1", stored.encode()))  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="koprogo_grid"):
        assert await store.load() == []
    (record,) = caplog.records
    assert record.getMessage().startswith("unreadable task state under t-1: ")
    assert "attempt (int_parsing)" in record.getMessage()
    assert document not in caplog.text and "first" not in caplog.text


CRASH = textwrap.dedent(
    """
    from koprogo_shared.logging_setup import configure_logging

    configure_logging("INFO", "router")
    raise RuntimeError("NATS gone; key sk-ant-api03-0123456789abcdefghij")
    """
)


def test_with_json_a_crash_is_one_json_line_on_stderr() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOG_")} | {"LOG_FORMAT": "json"}
    done = subprocess.run([sys.executable, "-c", CRASH], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "CRITICAL" and entry["message"] == "the process stops on RuntimeError"
    assert entry["exc"].endswith("RuntimeError: NATS gone; key [REDACTED]")
