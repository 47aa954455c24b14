"""An OTLP/HTTP trace receiver on loopback, for `koprogo up --traces`: traces without Jaeger.

`POST /v1/traces` takes an `ExportTraceServiceRequest`, protobuf or JSON (what every OpenTelemetry
SDK's OTLP/HTTP exporter sends, gzip or not), and writes its spans to a `TraceStore`; anything else
is refused with the status the OTLP specification names (404 another path, 415 another content
type, 400 a body that does not parse, 413 a body over `MAX_BODY_BYTES`). It serves from a thread of
the process that starts it (stdlib `ThreadingHTTPServer`): `koprogo up` is a synchronous loop
waiting on signals, and a test's event loop keeps running while the receiver answers the services.
"""

from __future__ import annotations

import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from koprogo_cli.trace_store import ExportError, TraceStore, parse_export, span_records, traces_dir

OTLP_HTTP_PORT = 4318
TRACES_PATH = "/v1/traces"
# An SDK's batch is at most 512 spans (OTEL_BSP_MAX_EXPORT_BATCH_SIZE): far below this.
MAX_BODY_BYTES = 8 * 1024 * 1024


class TraceReceiver:
    """The receiver's HTTP server on 127.0.0.1:`port` (0: any free port), writing to `store`."""

    def __init__(self, store: TraceStore, port: int = 0, host: str = "127.0.0.1") -> None:
        self.store = store
        handler = type("OtlpTraceHandler", (_OtlpTraceHandler,), {"store": store})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        # A short poll: `stop` waits for the loop's next look at its flag (0.5 s by default).
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="otlp-receiver", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The base URL an exporter is given (`OTEL_EXPORTER_OTLP_ENDPOINT`)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        """The full URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used as given by the exporter)."""
        return self.endpoint + TRACES_PATH

    def start(self) -> TraceReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> TraceReceiver:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def exporter_env(receiver: TraceReceiver, schedule_delay_ms: int = 500) -> dict[str, str]:
    """The environment that makes a service export its spans to `receiver` (koprogo_shared.telemetry).

    The standard variables: the generic endpoint, and the traces one too, which the SDK reads first
    (an operator's own OTEL_EXPORTER_OTLP_TRACES_ENDPOINT would otherwise win). A short batch delay:
    a chat's spans are in the store half a second after it, not five (the SDK's default).
    """
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.traces_url,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_BSP_SCHEDULE_DELAY": str(schedule_delay_ms),
    }


class _OtlpTraceHandler(BaseHTTPRequestHandler):
    store: TraceStore
    # Keep-alive: the exporters post every half second over one connection each.
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != TRACES_PATH:
            self._discard_body()
            return self._answer(HTTPStatus.NOT_FOUND, b"only /v1/traces is received here\n", "text/plain")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return self._answer(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"export batch too large\n", "text/plain"
            )
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "")
        try:
            request = parse_export(
                body, content_type, self.headers.get("Content-Encoding", "").strip().lower()
            )
        except ExportError as exc:
            status = (
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE if "content type" in str(exc) else HTTPStatus.BAD_REQUEST
            )
            return self._answer(status, f"{exc}\n".encode(), "text/plain")
        try:
            self.store.append(span_records(request))
        except OSError as exc:  # a full disk: the exporter retries on 503
            return self._answer(
                HTTPStatus.SERVICE_UNAVAILABLE, f"storing spans: {exc}\n".encode(), "text/plain"
            )
        if content_type.startswith("application/json"):
            return self._answer(HTTPStatus.OK, b"{}", "application/json")
        self._answer(
            HTTPStatus.OK, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"
        )

    def do_GET(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, b"POST spans to /v1/traces\n", "text/plain")

    def _discard_body(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per export would bury `koprogo up`'s terminal."""


def store_for(data_dir: Path) -> TraceStore:
    """The trace store of a stack's data folder."""
    return TraceStore(traces_dir(data_dir))
