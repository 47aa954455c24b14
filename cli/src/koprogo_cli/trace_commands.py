"""`koprogo trace TRACE_ID|TRACEPARENT` and `koprogo trace --last`: one trace as an indented tree.

Reads the spans `koprogo up --traces` received (trace_store.py) and prints each hop under the one
that caused it: when it started after the trace's first span, how long it took, its service and
name, and the attributes an operator looks for (model, tokens, node, subject, status). Exit 0 when
the trace is found (complete or not), 1 when it is unknown, 2 for an argument that is no trace id.

A trace is shown with what has arrived: the services export every half second, and the ledger
projects a chat after answering it. A span whose parent is missing is printed at the top with a
note, and recent spans say that more may follow.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from koprogo_cli.instance import data_dir_of
from koprogo_cli.invocation import command_hint
from koprogo_cli.trace_store import TraceStore, traces_dir

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# W3C traceparent: version-traceid-parentid-flags.
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
# The gateway's server spans for a chat (`"{METHOD} {route template}"`), for `--last`.
CHAT_SPANS = frozenset({"POST /mcp/v1/chat", "POST /v1/chat/completions"})
SUBJECT = "messaging.destination.name"
# What a line shows of a span's attributes, in this order, under these names; `koprogo.*` follow.
KEY_ATTRIBUTES = (
    ("gen_ai.request.model", "model"),
    ("koprogo.node_id", "node"),
    ("koprogo.execution_type", "type"),
    (SUBJECT, "subject"),
    ("http.response.status_code", "status"),
)
TOKENS_IN, TOKENS_OUT = "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"
# Spans that ended this recently may have siblings still in an exporter's batch (500 ms, retries).
SETTLE_S = 3.0


class TraceIdError(ValueError):
    """The argument is neither a trace id nor a traceparent."""


def trace_id_of(text: str) -> str:
    """The 32-hex trace id of a trace id or a W3C traceparent (case-insensitive)."""
    text = text.strip().lower()
    if TRACE_ID.match(text):
        return text
    if match := TRACEPARENT.match(text):
        return match.group(1)
    raise TraceIdError(
        f"{text!r} is neither a trace id (32 hex digits) nor a traceparent (00-<trace id>-<span id>-01)"
    )


def render_trace(trace_id: str, spans: Sequence[Mapping[str, Any]], now_ns: int | None = None) -> list[str]:
    """The lines `koprogo trace` prints for the spans of `trace_id` (and spans linked to it)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    own = {span["span_id"]: span for span in spans if span["trace_id"] == trace_id}
    children: dict[str | None, list[tuple[Mapping[str, Any], bool]]] = defaultdict(list)
    for span in own.values():
        children[span["parent_span_id"]].append((span, False))
    for span in spans:  # spans of other traces (a batch) that link to one of this trace's
        if span["trace_id"] != trace_id:
            anchor = next((link["span_id"] for link in span["links"] if link["span_id"] in own), None)
            if anchor is not None:
                children[anchor].append((span, True))
    orphans = {
        span_id
        for span_id, s in own.items()
        if s["parent_span_id"] is not None and s["parent_span_id"] not in own
    }
    tops = [(s, False) for s in own.values() if s["parent_span_id"] is None or s["span_id"] in orphans]
    start = min(s["start_ns"] for s in spans)
    end = max(s["end_ns"] for s in spans)
    services = sorted({s["service"] for s in own.values()})
    lines = [
        f"trace {trace_id}: {len(own)} spans from {len(services)} services ({', '.join(services)}), "
        f"{_duration(end - start)}",
        f"{'start':>10} {'duration':>10}  service  span  attributes",
    ]

    def walk(span: Mapping[str, Any], linked: bool, depth: int) -> None:
        note = " (linked)" if linked else ""
        if not linked and span["span_id"] in orphans:
            note = f" (its parent {span['parent_span_id']} has not arrived)"
        lines.append(
            f"{'+' + _duration(span['start_ns'] - start):>10} {_duration(span['end_ns'] - span['start_ns']):>10}  "
            f"{'  ' * depth}{span['service']}  {span['name']}{note}{_shown_attributes(span)}"
        )
        if not linked:
            for child, child_linked in sorted(children[span["span_id"]], key=lambda c: c[0]["start_ns"]):
                walk(child, child_linked, depth + 1)

    for span, linked in sorted(tops, key=lambda c: c[0]["start_ns"]):
        walk(span, linked, 0)
    if orphans or not any(s["parent_span_id"] is None for s in own.values()):
        lines.append(
            f"incomplete: {len(orphans)} span(s) wait for a parent that has not arrived; "
            "if the request is recent, its spans are still arriving: run this again in a moment"
        )
    elif (waited := (now_ns - end) / 1e9) < SETTLE_S:
        lines.append(f"spans may still be arriving (the last ended {waited:.1f} s ago)")
    return lines


def _shown_attributes(span: Mapping[str, Any]) -> str:
    attributes = span["attributes"]
    shown = [
        f"{label}={attributes[key]}"
        for key, label in KEY_ATTRIBUTES
        # `process <subject>` already names its subject
        if key in attributes and not (key == SUBJECT and span["name"].endswith(f" {attributes[key]}"))
    ]
    if TOKENS_IN in attributes or TOKENS_OUT in attributes:
        shown.append(f"tokens={attributes.get(TOKENS_IN, '?')}→{attributes.get(TOKENS_OUT, '?')}")
    named = {key for key, _ in KEY_ATTRIBUTES}
    shown += [
        f"{key.removeprefix('koprogo.')}={value}"
        for key, value in sorted(attributes.items())
        if key.startswith("koprogo.") and key not in named
    ]
    status = span["status"]
    if status["code"] == "ERROR":
        shown.append(f"ERROR{': ' + status['message'] if status['message'] else ''}")
    return "  " + " ".join(shown) if shown else ""


def _duration(ns: int) -> str:
    ms = ns / 1e6
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"


def is_chat_span(span: Mapping[str, Any]) -> bool:
    """A gateway's server span for a chat request (the root of a chat's trace)."""
    return (
        span.get("service") == "koprogo-gateway"
        and span.get("kind") == "SERVER"
        and span.get("name") in CHAT_SPANS
    )


def cmd_trace(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    store = TraceStore(traces_dir(data_dir))
    if not store.files():
        print(
            f"koprogo trace: no spans were received in {store.folder}: start the stack with "
            f"`{command_hint('up', '--traces')}` (`make up` does), or send OTLP to a collector of your own",
            file=sys.stderr,
        )
        return 1
    if args.last:
        found = store.last_trace_id(is_chat_span, needle='"koprogo-gateway"')
        if found is None:
            print(f"koprogo trace: no chat's trace in {store.folder} yet: send a chat first", file=sys.stderr)
            return 1
        trace_id = found
    else:
        try:
            trace_id = trace_id_of(args.trace)
        except TraceIdError as exc:
            print(f"koprogo trace: {exc}", file=sys.stderr)
            return 2
    spans = store.trace(trace_id)
    if not any(span["trace_id"] == trace_id for span in spans):
        print(
            f"koprogo trace: trace {trace_id} is unknown in {store.folder}: no span of it arrived (a request "
            "of a moment ago: run this again; an old one: its spans were rotated away; another stack's: "
            "give its --data-dir)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        for span in spans:
            print(json.dumps(span, ensure_ascii=False))
        return 0
    print("\n".join(render_trace(trace_id, spans)))
    return 0


def add_trace_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace = sub.add_parser(
        "trace",
        help="print one request's trace as a tree of its hops (spans received by `koprogo up --traces`)",
        description="Print a trace received by `koprogo up --traces`: every hop of a request (gateway, "
        "router, edge or cloud worker, grid scheduler, ledger) under the one that caused it, with its "
        "duration, model, tokens, node and NATS subject. The gateway returns each request's trace in "
        "its `traceparent` response header.",
    )
    which = trace.add_mutually_exclusive_group(required=True)
    which.add_argument("trace", nargs="?", help="a trace id (32 hex digits) or a traceparent header's value")
    which.add_argument("--last", action="store_true", help="the most recent chat's trace")
    trace.add_argument("--json", action="store_true", help="the spans as JSON lines instead of a tree")
    trace.add_argument("--data-dir", help="the stack's data folder (default ./data)")
    trace.set_defaults(func=cmd_trace)
