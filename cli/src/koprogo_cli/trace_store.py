"""The spans `koprogo up --traces` receives, one JSON object per line in `<data>/traces/`.

Each service exports its spans over OTLP/HTTP (`koprogo_shared.telemetry`); the receiver
(trace_receiver.py) hands each export request to `TraceStore.append`, which writes every span
as one line: trace_id, span_id, parent_span_id (hex; null for a root), name, kind, service,
start_ns, end_ns, attributes, status, links. The file is rotated when it passes `max_bytes`
(`spans.jsonl` -> `spans.jsonl.1` ...; `backups` old files kept), so a stack left running for
months on a Pi's SD card holds a bounded amount. `koprogo trace` reads a trace back from every
file, oldest first: a trace is found as long as its spans have not been rotated away.

OTLP/JSON differs from protobuf's own JSON mapping in one place: trace and span ids are hex
strings, not base64 (the OTLP specification's "JSON Protobuf Encoding"); `parse_export` turns
them into what `json_format` expects before parsing.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SPANS_FILE = "spans.jsonl"
# 16 MiB a file, 3 old files: at most 64 MiB, some tens of thousands of chats' traces.
MAX_BYTES = 16 * 1024 * 1024
BACKUPS = 3
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class ExportError(ValueError):
    """An export request that is not OTLP traces (bad body, encoding or content type)."""


def traces_dir(data_dir: Path) -> Path:
    """Where a stack's received spans live."""
    return data_dir / "traces"


def parse_export(body: bytes, content_type: str, content_encoding: str = "") -> ExportTraceServiceRequest:
    """An OTLP/HTTP traces request body (protobuf or JSON, plain, gzip or deflate) as its message."""
    try:
        if content_encoding == "gzip":
            body = gzip.decompress(body)
        elif content_encoding == "deflate":
            body = zlib.decompress(body)
        elif content_encoding not in ("", "identity"):
            raise ExportError(f"content encoding {content_encoding!r} is not supported")
    except (OSError, EOFError, zlib.error) as exc:
        raise ExportError(f"the body is not {content_encoding}: {exc}") from None
    media_type = content_type.split(";", 1)[0].strip().lower()
    request = ExportTraceServiceRequest()
    if media_type == "application/x-protobuf":
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise ExportError(f"not an ExportTraceServiceRequest: {exc}") from None
    elif media_type == "application/json":
        try:
            json_format.ParseDict(_ids_as_base64(json.loads(body)), request, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError) as exc:
            raise ExportError(f"not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None
    else:
        raise ExportError(f"content type {content_type!r}: use application/x-protobuf or application/json")
    return request


def _ids_as_base64(value: Any) -> Any:
    """OTLP/JSON's hex ids as the base64 that protobuf's JSON parser reads for bytes fields."""
    if isinstance(value, list):
        return [_ids_as_base64(item) for item in value]
    if not isinstance(value, dict):
        return value
    converted = {}
    for key, item in value.items():
        if key in _ID_FIELDS and isinstance(item, str):
            try:
                item = base64.b64encode(bytes.fromhex(item)).decode()
            except ValueError:
                raise ExportError(f"{key} {item!r} is not hex") from None
        converted[key] = _ids_as_base64(item)
    return converted


def span_records(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """Every span of an export request as the line `TraceStore` writes for it."""
    records = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", "unknown_service"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                records.append(_record(span, service))
    return records


def _record(span: Span, service: str) -> dict[str, Any]:
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() or None,
        "name": span.name,
        "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        "service": service,
        "start_ns": span.start_time_unix_nano,
        "end_ns": span.end_time_unix_nano,
        "attributes": _attributes(span.attributes),
        "status": {
            "code": Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
            "message": span.status.message,
        },
        # A consumer that handles a batch may link each message's context instead of parenting it.
        "links": [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()} for link in span.links],
    }


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


class TraceStore:
    """Spans as JSON lines under `folder`, rotated by size; safe to append from several threads."""

    def __init__(self, folder: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.folder / SPANS_FILE

    def files(self) -> list[Path]:
        """The span files that exist, oldest first."""
        candidates = [self.folder / f"{SPANS_FILE}.{n}" for n in range(self.backups, 0, -1)] + [self.path]
        return [path for path in candidates if path.exists()]

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write the records, one line each, then rotate if the file passed `max_bytes`."""
        if not records:
            return
        text = "".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in records)
        with self._lock:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Private, as the services' logs: span names and attributes show who uses what, and when.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "a", encoding="utf-8") as out:
                out.write(text)
                size = out.tell()
            if size > self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        for n in range(self.backups, 0, -1):
            older = self.folder / f"{SPANS_FILE}.{n}"
            newer = self.path if n == 1 else self.folder / f"{SPANS_FILE}.{n - 1}"
            if newer.exists():
                newer.replace(older)  # the oldest backup is overwritten: dropped
        if self.backups == 0:
            self.path.unlink()

    def records(self, needle: str = "") -> Iterator[dict[str, Any]]:
        """Every stored span (whose line contains `needle`), oldest first; a torn last line is skipped."""
        for path in self.files():
            try:
                with path.open(encoding="utf-8") as lines:
                    for line in lines:
                        if needle in line:
                            try:
                                yield json.loads(line)
                            except ValueError:
                                continue  # a line being written, or cut by a full disk
            except FileNotFoundError:
                continue  # rotated away while we read

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans of a trace, and the spans in other traces that link to one of its spans."""
        trace_id = trace_id.lower()
        return [
            record
            for record in self.records(trace_id)
            if record.get("trace_id") == trace_id
            or any(link.get("trace_id") == trace_id for link in record.get("links", ()))
        ]

    def last_trace_id(self, wanted: Callable[[dict[str, Any]], bool], needle: str = "") -> str | None:
        """The trace id of the most recently stored span that is `wanted` (its line contains `needle`)."""
        for path in reversed(self.files()):  # newest first, each file read back to front (<= max_bytes)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                continue
            for line in reversed(lines):
                if needle in line:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if wanted(record):
                        return str(record.get("trace_id"))
        return None
