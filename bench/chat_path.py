"""Benchmark: the whole chat path vs llama-cpp-python called directly, in one run.

    .venv/bin/python bench/chat_path.py [--runs 300] [--long-runs 5] [--block 10] [--micro-iterations 100000]

Starts the real stack (embedded NATS and PostgreSQL, every service its own process, the
bundled SmolLM2-135M model) with `koprogo_cli.stack.Stack` twice: one without any OTEL_*
variable (tracing off, as a default install runs) and one exporting its spans to an OTLP
receiver (`koprogo up --traces`: `trace_receiver.TraceReceiver` in a process of its own,
`exporter_env`). Then, alternating so that every side sees the same machine state:

* added latency: the same prompt with `max_tokens=1` through `POST /mcp/v1/chat` of each
  stack and straight through `Llama.create_chat_completion` (same model file, same
  settings); the median of the per-pair differences.
* tracing's cost (issue 16): the on-minus-off difference of the path's latency, pair by
  pair (the stacks take turns in blocks of `--block` chats), with its interquartile range
  and a bootstrap 95 % confidence interval of its median.
* throughput: a prompt that makes a long answer with `max_tokens=128`, completion tokens
  per second of wall time on each side; the ratio of medians.
* the off path in this process (tracing never configured): `publish_event`'s header
  building and `consume`'s `consumer_span` vs the bare calls (timeit, best of 5), in µs.

Prints Markdown tables to paste into bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import httpx
from llama_cpp import Llama
from nats.aio.msg import Msg

from koprogo_cli.dev_auth import DEMO_COPRO_ID
from koprogo_cli.ports import free_port
from koprogo_cli.stack import Stack
from koprogo_cli.trace_receiver import TraceReceiver, exporter_env, store_for
from koprogo_node.adapters.model_files import bundled_model_path
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.events import ChatMessage, ChatRequested, utc_now
from koprogo_shared.publishing import event_headers
from koprogo_shared.telemetry import consumer_span, producer_span, tracing_enabled

SHORT = "Bonjour, résume ce PV en une phrase."
# With temperature 0 this prompt runs to the 128-token cap on both sides (checked: finish "length").
LONG = "Explique en détail, étape par étape, comment se déroule une assemblée générale de copropriété."


def direct(llm: Llama, prompt: str, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0
    )
    return time.perf_counter() - started, int(out["usage"]["completion_tokens"])  # type: ignore[index]


def chat(client: httpx.Client, prompt: str, max_tokens: int) -> tuple[float, httpx.Response]:
    body = {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "context": f"copro:{DEMO_COPRO_ID}",  # the copro of the stack's dev token
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    started = time.perf_counter()
    response = client.post("/mcp/v1/chat", json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response


def through_gateway(client: httpx.Client, prompt: str, max_tokens: int) -> tuple[float, int]:
    elapsed, response = chat(client, prompt, max_tokens)
    return elapsed, int(response.json()["usage"]["completion_tokens"])


def new_stack(name: str, service_env: dict[str, str]) -> Stack:
    return Stack(
        Path(tempfile.mkdtemp(prefix=f"koprogo-bench-{name}-")),
        gateway_port=free_port(),
        node_port=free_port(),
        log=lambda line: print(f"# [{name}] {line}", file=sys.stderr),
        service_env=service_env,
    )


def serve_receiver(data_dir: str) -> None:
    """`--receiver DIR`: an OTLP receiver storing into DIR's trace store until stdin closes. Its own
    process, as under `koprogo up`: parsing and writing spans do not take this process's GIL."""
    with TraceReceiver(store_for(Path(data_dir))) as receiver:
        print(json.dumps(exporter_env(receiver)), flush=True)
        sys.stdin.read()


def median_iqr(values: list[float]) -> str:
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"{q2:.2f} ms (IQR {q1:.2f} to {q3:.2f})"


def median_ci(values: list[float], resamples: int = 5000) -> tuple[float, float]:
    """A bootstrap 95 % confidence interval of the median of `values` (percentile method, seeded)."""
    rng = random.Random(16)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def per_call_us(fn: Callable[[], object], iterations: int) -> float:
    return min(timeit.Timer(fn).repeat(repeat=5, number=iterations)) / iterations * 1e6


def micro_rows(iterations: int) -> list[tuple[str, float, float]]:
    """(what, bare µs, with telemetry µs) for the off path's calls, mirroring their real callers
    (`publishing._publish`, `consumer.decide`)."""
    assert not tracing_enabled(), "the micro-measure is of the off path"
    subject = f"koprogo.events.chat.requested.{DEMO_COPRO_ID}"
    event = ChatRequested(
        source="gateway",
        model=BUNDLED_MODEL_ID,
        messages=[ChatMessage(role="user", content=SHORT)],
        reply_subject="_INBOX.bench",
        deadline=utc_now(),
    )

    def publish_bare() -> None:
        event_headers(event)

    def publish_traced() -> None:
        headers = event_headers(event)
        with producer_span(subject, headers) as span:
            span.set_attribute("messaging.message.id", event.id)

    def handle(msg: Msg) -> None:
        pass

    def consume(msg: Msg) -> tuple[Callable[[], None], Callable[[], None]]:
        def traced() -> None:
            with consumer_span(msg):
                handle(msg)

        return lambda: handle(msg), traced

    plain = Msg(None, subject=subject, headers=event_headers(event))  # type: ignore[arg-type]
    # A caller's traceparent: with tracing off the context is still passed on (attached, detached).
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    carried = Msg(None, subject=subject, headers={**event_headers(event), "traceparent": parent})  # type: ignore[arg-type]
    cases = [
        ("publish_event headers: event_headers vs + producer_span", publish_bare, publish_traced),
        ("consumer_span around a handler, message without traceparent", *consume(plain)),
        ("consumer_span around a handler, message with a caller's traceparent", *consume(carried)),
    ]
    return [
        (what, per_call_us(bare, iterations), per_call_us(traced, iterations)) for what, bare, traced in cases
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--long-runs", type=int, default=5)
    parser.add_argument("--block", type=int, default=10, help="chats in a row on one stack")
    parser.add_argument("--micro-iterations", type=int, default=100_000)
    parser.add_argument("--receiver", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        serve_receiver(args.receiver)
        return 0
    os.environ.pop("NATS_URL", None)
    os.environ.pop("DATABASE_URL", None)
    # Hundreds of chats a minute from one user: limits that never refuse, still checked on every
    # chat (the counter's compare-and-set write stays on the path).
    os.environ["RATE_LIMIT_PER_USER"] = os.environ["RATE_LIMIT_PER_COPRO"] = "100000000"
    # The off stack inherits this environment: no OTEL_* variable may reach it (nor this process).
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        print(f"# removed {name} from the environment", file=sys.stderr)
        del os.environ[name]

    traces_dir = tempfile.mkdtemp(prefix="koprogo-bench-traces-")
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver", traces_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stacks: list[Stack] = []  # stopped in `finally`, also a stack that failed half-way through start
    try:
        assert receiver.stdout is not None
        stacks = [new_stack("off", {}), new_stack("on", json.loads(receiver.stdout.readline()))]
        for stack in stacks:
            stack.start()
        for stack in stacks:
            stack.wait_for_model(BUNDLED_MODEL_ID)
        llm = Llama(model_path=str(bundled_model_path()), n_ctx=2048, verbose=False)
        off, on = (
            httpx.Client(
                base_url=stack.gateway_url,
                timeout=120,
                headers={"Authorization": f"Bearer {stack.dev_token}"},
            )
            for stack in stacks
        )
        # Each stack is what it claims: only the tracing one answers with a traceparent.
        for client, tracing in ((off, False), (on, True)):
            if ("traceparent" in chat(client, SHORT, 1)[1].headers) != tracing:
                raise SystemExit(
                    f"the {'on' if tracing else 'off'} stack answered with tracing {not tracing}"
                )
        for _ in range(3):  # warm every side
            direct(llm, SHORT, 1)
            through_gateway(off, SHORT, 1)
            through_gateway(on, SHORT, 1)

        # Blocks of (direct, path) pairs, one stack's block then the other's, which goes first
        # alternating. Not one chat each in turn: measured so, the added latency nearly doubled on
        # both sides (16 ms, vs 9 ms in blocks a run later), each chat waking processes the other
        # stack's had just displaced.
        ms: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
        for block, start in enumerate(range(0, args.runs, args.block)):
            for name, client in (("off", off), ("on", on))[:: -1 if block % 2 else 1]:
                through_gateway(client, SHORT, 1)  # not counted: its stack's processes wake up
                for _ in range(min(args.block, args.runs - start)):
                    d, _ = direct(llm, SHORT, 1)
                    p, _ = through_gateway(client, SHORT, 1)
                    ms[name].append((d * 1000, p * 1000))
        added = {name: [p - d for d, p in pairs] for name, pairs in ms.items()}
        # The direct calls are the same on both sides: the difference is taken on the path alone.
        on_minus_off = [on_p - off_p for (_, off_p), (_, on_p) in zip(ms["off"], ms["on"], strict=True)]

        tps: dict[str, list[float]] = {"direct": [], "off": [], "on": []}
        tokens = []
        for _ in range(args.long_runs):
            d, n_d = direct(llm, LONG, 128)
            p_off, n_off = through_gateway(off, LONG, 128)
            p_on, n_on = through_gateway(on, LONG, 128)
            tps["direct"].append(n_d / d)
            tps["off"].append(n_off / p_off)
            tps["on"].append(n_on / p_on)
            tokens.append((n_d, n_off))
        ratio = statistics.median(tps["off"]) / statistics.median(tps["direct"])

        time.sleep(1.5)  # the on stack's last batch (OTEL_BSP_SCHEDULE_DELAY 500 ms) reaches the store
        spans = list(store_for(Path(traces_dir)).records())
        traces = len({span.get("trace_id") for span in spans})
        micro = micro_rows(args.micro_iterations)

        direct_off = [d for d, _ in ms["off"]]
        print("| measure | direct llama-cpp-python | whole path | result |")
        print("|---|---|---|---|")
        print(
            f"| median latency, max_tokens=1 ({args.runs} pairs) | {statistics.median(direct_off):.2f} ms "
            f"| {statistics.median([p for _, p in ms['off']]):.2f} ms | added {statistics.median(added['off']):.2f} ms (median of pair differences) |"
        )
        print(
            f"| tokens/s, max_tokens=128 ({args.long_runs} pairs; tokens direct/path {tokens}) "
            f"| {statistics.median(tps['direct']):.1f} | {statistics.median(tps['off']):.1f} | ratio {ratio:.3f} |"
        )

        low, high = median_ci(on_minus_off)
        verdict = "not distinguishable from 0" if low <= 0 <= high else "measurable"
        print()
        print(
            f"| tracing ({args.runs} pairs each, in alternating blocks of {args.block}; {len(spans)} spans in {traces} traces received) | off | on | on - off |"
        )
        print("|---|---|---|---|")
        print(
            f"| added latency over direct, max_tokens=1 | {median_iqr(added['off'])} | {median_iqr(added['on'])} "
            f"| {median_iqr(on_minus_off)}; 95 % CI of the median {low:.2f} to {high:.2f} ms: {verdict} |"
        )
        print(
            f"| tokens/s, max_tokens=128 ({args.long_runs} runs) | {statistics.median(tps['off']):.1f} "
            f"| {statistics.median(tps['on']):.1f} | ratio {statistics.median(tps['on']) / statistics.median(tps['off']):.3f} |"
        )

        print()
        print(
            f"| off path in-process, tracing never configured (best of 5 x {args.micro_iterations:,}) | bare | with telemetry | added |"
        )
        print("|---|---|---|---|")
        for what, bare, traced in micro:
            print(f"| {what} | {bare:.3f} µs | {traced:.3f} µs | {traced - bare:+.3f} µs |")
        return 0
    finally:
        for stack in stacks:
            stack.stop()
        if receiver.stdin is not None:
            receiver.stdin.close()
        receiver.wait(10)


if __name__ == "__main__":
    sys.exit(main())
