"""Traces: one OpenTelemetry trace per chat or grid task, carried across every NATS hop.

Every JetStream publish (`publishing.publish_event`) and every core-NATS reply carries the
W3C trace context (`traceparent`, `tracestate`) in its headers (`inject_trace_headers`, inside a
PRODUCER span `publish <subject family>`); the consumer loop (`consumer.decide`,
`decide_batch`) restores it around the handler (`consumer_span`: a CONSUMER span
`process <subject family>`), so whatever the handler publishes continues the same trace.

`configure_tracing(service_name)` is called once at a process's start. With no exporter in the
environment (none of OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
OTEL_TRACES_EXPORTER) or with OTEL_SDK_DISABLED=true it installs nothing: no span is created,
and a context that arrived in a message is only passed on (a trace crossing a service that does
not export keeps its id, without that service's spans). Otherwise an SDK TracerProvider with
the service's `service.name` sends its spans in batches over OTLP/HTTP; the exporter reads its
other OTEL_EXPORTER_OTLP_* variables (headers, timeout, certificate) itself, the provider
OTEL_TRACES_SAMPLER and OTEL_RESOURCE_ATTRIBUTES. Spans are flushed at exit.

No attribute carries a message's content, a user id or a token: span names and
`messaging.destination.name` use the subject's family (`subject_family`), its ids removed.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Tracer, format_trace_id

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
# The variables that turn export on (any one of them; OTEL_TRACES_EXPORTER=none does not).
EXPORT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
)

# None until `configure_tracing` installs a provider: then every helper here is a pass-through.
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """Whether `env` asks for spans to be exported (and OTEL_SDK_DISABLED does not forbid it)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in EXPORT_VARIABLES)


def configure_tracing(
    service_name: str,
    env: Mapping[str, str] = os.environ,
    *,
    exporter: SpanExporter | None = None,
    span_queue: int | None = None,
) -> None:
    """Install this process's tracer provider, once at start; nothing when `env` asks for no export.

    `exporter` (tests: an InMemorySpanExporter) replaces the OTLP one, whatever `env` says, and
    gets each span as it ends. Calling it again replaces the previous provider (shut down first).
    `span_queue`: how many ended spans may wait for export (`span_queue_size`).
    """
    global _tracer, _provider
    if exporter is None and not tracing_wanted(env):
        return
    # Imported here: a process that exports nothing never loads the SDK.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    shutdown_tracing()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}), shutdown_on_exit=False)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        queue = span_queue_size(env, span_queue)
        provider.add_span_processor(BatchSpanProcessor(_exporter_from(env), max_queue_size=queue))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # The global one may be set once per process; our own spans use `_tracer` either way.
        trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer("koprogo")
    atexit.unregister(shutdown_tracing)  # once, however often this is called
    atexit.register(shutdown_tracing)
    log.info("tracing on: spans of %s exported", service_name)


# The batch span processor's queue when nothing else is said (the SDK's default).
DEFAULT_SPAN_QUEUE = 2048


def span_queue_size(env: Mapping[str, str], wanted: int | None) -> int | None:
    """How many ended spans the batch processor holds before it drops them: `OTEL_BSP_MAX_QUEUE_SIZE`
    when set (None here: the SDK reads it), else `wanted` if more than the SDK's 2,048. A process
    that ends many spans at once asks for more: the ledger ends a span per event of a batch, two
    batches of `LEDGER_BATCH` (2,048) at a time while it catches up."""
    if env.get("OTEL_BSP_MAX_QUEUE_SIZE", "").strip() or wanted is None:
        return None
    # Never fewer than the SDK's own default (nor than its export batch, 512, which it requires).
    return max(wanted, DEFAULT_SPAN_QUEUE)


def _exporter_from(env: Mapping[str, str]) -> SpanExporter:
    kind = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind not in ("otlp", "otlp_proto_http"):
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported here; exporting over OTLP/HTTP", kind)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # The same rule as the exporter's own reading of os.environ, applied to `env`.
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not endpoint and base:
        endpoint = base.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint or None)


def shutdown_tracing() -> None:
    """Export what is buffered and stop; the helpers are pass-throughs again. Safe to call twice."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()  # flushes the batch processor first


def tracing_enabled() -> bool:
    return _tracer is not None


# How many leading tokens of a subject name its family; the rest are ids (copro, node, request,
# user, gateway) or free values (pool, model) that would make span names unbounded.
_FAMILY_TOKENS = {"events": 4, "work": 3, "grid": 3, "nodes": 3}


def subject_family(subject: str) -> str:
    """`koprogo.events.chat.requested.<copro>` -> `koprogo.events.chat.requested`; inboxes -> `_INBOX`."""
    tokens = subject.split(".")
    if tokens[0] != "koprogo" or len(tokens) < 2:
        return tokens[0]
    return ".".join(tokens[: _FAMILY_TOKENS.get(tokens[1], 2)])


def _messaging_attributes(subject: str, operation: str) -> dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject_family(subject),
        "messaging.operation.type": operation,
    }


def inject_trace_headers(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context (`traceparent`, `tracestate`) to a message's headers; none when there is none."""
    # Outside any trace (tracing off, no context arrived) the propagators would add nothing: skip them.
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)


@contextlib.contextmanager
def producer_span(subject: str, headers: MutableMapping[str, str]) -> Iterator[Span]:
    """A PRODUCER span `publish <family>` around a publish to `subject`, its context put in `headers`."""
    if _tracer is None:
        inject_trace_headers(headers)  # passes on a context that arrived in a message
        yield INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        f"publish {subject_family(subject)}",
        kind=SpanKind.PRODUCER,
        attributes=_messaging_attributes(subject, "send"),
        links=_producer_links.get(),
    ) as span:
        inject_trace_headers(headers)
        yield span


# The callers' spans a PRODUCER span started here links to (`in_traces_of`, several callers).
_producer_links: ContextVar[tuple[Link, ...]] = ContextVar("koprogo_producer_links", default=())


def current_trace() -> otel_context.Context:
    """The caller's trace context, kept to publish in its trace from another task (`in_traces_of`)."""
    return otel_context.get_current()


@contextlib.contextmanager
def in_traces_of(callers: Sequence[otel_context.Context]) -> Iterator[None]:
    """What is published inside is for these callers (`current_trace` of each): one message for several.

    One caller: its context is made current, so the publish is in its trace as if it had
    published itself. Several: no trace is current (the message starts its own), and the PRODUCER
    span links to each caller's span: OpenTelemetry's way for one message serving several traces
    (a grouped delivery record).
    """
    if len(callers) == 1:
        token = otel_context.attach(callers[0])
        try:
            yield
        finally:
            otel_context.detach(token)
        return
    links = tuple(
        Link(span_context)
        for caller in callers
        if (span_context := trace.get_current_span(caller).get_span_context()).is_valid
    )
    token = otel_context.attach(otel_context.Context())
    links_token = _producer_links.set(links)
    try:
        yield
    finally:
        _producer_links.reset(links_token)
        otel_context.detach(token)


@contextlib.contextmanager
def continued_span(
    name: str, carrier: Mapping[str, str] | None, kind: SpanKind, attributes: Mapping[str, str] | None = None
) -> Iterator[Span]:
    """A span of `kind` continuing the trace whose context `carrier` holds, made current; without
    one in `carrier`, a child of the current span, or the root of a new trace.

    Tracing off: no span, but the carrier's context is made current, so what is published inside
    still carries it.
    """
    parent = propagate.extract(carrier) if carrier and TRACEPARENT in carrier else None
    if _tracer is None:
        if parent is None:
            yield INVALID_SPAN
            return
        token = otel_context.attach(parent)
        try:
            yield trace.get_current_span()
        finally:
            otel_context.detach(token)
        return
    with _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as span:
        yield span


@contextlib.contextmanager
def consumer_span(msg: Msg, name: str | None = None) -> Iterator[Span]:
    """The CONSUMER span of handling `msg` (`process <family>` unless `name`), child of its sender's span."""
    if _tracer is None:
        # No span: only the message's context, if it carries one, is made current. Its name and
        # attributes are not worked out for nothing.
        headers = msg.headers
        if not headers or TRACEPARENT not in headers:
            yield INVALID_SPAN
            return
        with continued_span("", headers, SpanKind.CONSUMER) as passed_on:
            yield passed_on
        return
    with continued_span(
        name or f"process {subject_family(msg.subject)}",
        msg.headers,
        SpanKind.CONSUMER,
        _messaging_attributes(msg.subject, "process"),
    ) as span:
        yield span


@contextlib.contextmanager
def internal_span(name: str, attributes: Mapping[str, str | int] | None = None) -> Iterator[Span]:
    """An INTERNAL span in the current trace (the generation's `generate`); nothing when tracing is off."""
    if _tracer is None:
        yield INVALID_SPAN
        return
    with _tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes) as span:
        yield span


def start_consumer_span(msg: Msg) -> Span:
    """A CONSUMER span for one message of a batch, not made current (the batch is handled as one):
    the caller ends it. INVALID_SPAN when tracing is off."""
    if _tracer is None:
        return INVALID_SPAN
    headers = msg.headers
    parent = propagate.extract(headers) if headers and TRACEPARENT in headers else None
    return _tracer.start_span(
        f"process {subject_family(msg.subject)}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=_messaging_attributes(msg.subject, "process"),
    )


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), None outside a trace."""
    span_context = trace.get_current_span().get_span_context()
    return format_trace_id(span_context.trace_id) if span_context.is_valid else None


def current_traceparent() -> str | None:
    """The current span's W3C `traceparent`, None outside a trace."""
    carrier: dict[str, str] = {}
    inject_trace_headers(carrier)
    return carrier.get(TRACEPARENT)


def trace_id_of(headers: Mapping[str, str] | None) -> str | None:
    """The trace id (32 hex digits) a message's `traceparent` header names; None without a valid one."""
    if not headers or TRACEPARENT not in headers:
        return None
    span_context = trace.get_current_span(propagate.extract(headers)).get_span_context()
    return format_trace_id(span_context.trace_id) if span_context.is_valid else None


def generation_span(model: str, node_id: str, execution_type: str) -> contextlib.AbstractContextManager[Span]:
    """The INTERNAL span `generate` of one answer's generation (edge node, cloud worker), with
    its model, node (or cloud deployment) and execution type; `record_usage` adds its tokens."""
    return internal_span(
        "generate",
        {
            "gen_ai.request.model": model,
            "koprogo.node_id": node_id,
            "koprogo.execution_type": execution_type,
        },
    )


def record_usage(span: Span, input_tokens: int, output_tokens: int) -> None:
    """A generation's token counts on its span (`gen_ai.usage.*`)."""
    if span.is_recording():
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
