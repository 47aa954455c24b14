"""Soak: the resident memory of every service over a long steady mixed load (issue 17, benchmark 4).

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 2] [--out bench/results]
                                   [--sample-every 5] [--max-tokens 8] [--kinds chat,stream,...]

* The stack: `koprogo_cli.stack.Stack`, as `koprogo up` runs it (embedded nats-server with
  fsynced JetStream, embedded PostgreSQL, ledger, router, cloud worker, grid scheduler, the
  edge node with the bundled SmolLM2 model and `--grid`, gateway), plus an `openai_compatible`
  cloud deployment serving `gpt-4o-mini` from `bench/instant_openai.py` (cloud chats cost the
  stack its own work only). Rate limits raised out of the way (still counted on every chat).
* The load, open loop at `--rate` requests/s (one started every 1/rate s whatever the earlier
  ones do), in a fixed cycle of 24 (`CYCLE`): 4 edge chats (plain and streamed on
  `/mcp/v1/chat`, plain and streamed on `/v1/chat/completions`), 14 cloud chats (4 on
  `/mcp/v1/chat`, 6 plain and 4 streamed on `/v1/chat/completions`), 4 `GET /mcp/v1/stats`, 2
  grid tasks (`POST /mcp/v1/execute` `predict_expenses`, then `GET /mcp/v1/tasks/{id}` every
  second until it ends). Each prompt is different (a counter in it); `--max-tokens` small: the
  bundled model on 2 shared cores answers 8 tokens in 0.4-4 s (more under a load of 10), so
  the edge gets a sixth of the cycle. `--kinds` keeps only the named kinds of the cycle (`KINDS`),
  in the same order, to tell which load a service's growth follows.
* The memory: every `--sample-every` s, the RSS of each service process with its children
  (psutil), nats-server, PostgreSQL (the postmaster and its backends summed: shared buffers
  count once per backend that touched them, so also their PSS, which counts them once).
* Verdict per process (`soak_report.verdict`): median RSS of the last 5 minutes against the 5
  minutes after the warm-up (the first 5 minutes left out): within ±10 %, flat.
* Errors: every failed request is counted by kind and reason (status and error code, or the
  exception), and printed; the run fails on any. At the end every chat answered must be in the
  ledger (`mcp_responses` delivered, its `mcp_requests` row completed), every completed task
  completed in `mcp_tasks`.

Writes `--out`/soak-rss.csv (one row per sample, MiB per process), soak-summary.csv (the
verdicts) and soak-rss.svg (`soak_report.rss_svg`); prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from soak_report import MiB, Sample, verdict, windows_for
from soak_report import rss_svg as draw_svg
from support import (
    BENCH,
    CLOUD_MODEL,
    log,
    machine,
    stack_processes,
    start_instant_backend,
    stop_process,
    use_stack_environ,
)

from koprogo_cli.dev_auth import DEMO_COPRO_ID
from koprogo_cli.ports import free_port
from koprogo_cli.stack import Stack
from koprogo_shared.catalogue import BUNDLED_MODEL_ID

# The cycle of request kinds, one per arrival.
CYCLE = (
    *("chat", "cloud_openai", "stats", "cloud_stream_openai", "cloud_chat", "cloud_openai"),
    *("stream", "cloud_stream_openai", "task", "cloud_openai", "stats", "cloud_chat"),
    *("chat_openai", "cloud_openai", "stats", "cloud_stream_openai", "cloud_chat", "cloud_openai"),
    *("stream_openai", "cloud_stream_openai", "task", "cloud_openai", "stats", "cloud_chat"),
)
CONTEXT = f"copro:{DEMO_COPRO_ID}"
TASK_FINAL = {"completed", "failed", "expired", "cancelled"}
HISTORY = [{"month": f"2025-{m:02d}", "category": "nettoyage", "amount": 400 + 7 * m} for m in range(1, 13)]


Call = Callable[[httpx.AsyncClient, int, int, "Answered", str], Awaitable[None]]


class RequestFailed(Exception):
    """A request of the load that did not end as it should: `reason` is what it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)


@dataclass
class Answered:
    response_ids: list[str] = field(default_factory=list)  # ChatCompleted ids (plain answers)
    request_ids: list[str] = field(default_factory=list)  # request ids (OpenAI stream chunks)
    task_ids: list[str] = field(default_factory=list)  # tasks seen completed


def refusal(response: httpx.Response) -> RequestFailed:
    try:
        body = response.json()
        error = body.get("error")
        code = error.get("code") if isinstance(error, dict) else error
    except (json.JSONDecodeError, AttributeError):
        code = None
    return RequestFailed(f"HTTP {response.status_code} {code or ''}".strip(), response.text[:300])


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Request {i}: name one thing a building's caretaker checks."}]


async def sse_events(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(event, data) of each Server-Sent Event of a streamed answer."""
    events: list[tuple[str | None, str]] = []
    event: str | None = None
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            events.append((event, line.removeprefix("data:").strip()))
            event = None
    return events


async def chat_mcp(
    client: httpx.AsyncClient, i: int, max_tokens: int, answered: Answered, model: str
) -> None:
    body = {"model": model, "messages": messages(i), "max_tokens": max_tokens, "context": CONTEXT}
    response = await client.post("/mcp/v1/chat", json=body)
    if response.status_code != 200:
        raise refusal(response)
    answered.response_ids.append(response.json()["id"])


async def stream_mcp(
    client: httpx.AsyncClient, i: int, max_tokens: int, answered: Answered, model: str
) -> None:
    body = {
        "model": model,
        "messages": messages(i),
        "max_tokens": max_tokens,
        "context": CONTEXT,
        "stream": True,
    }
    async with client.stream("POST", "/mcp/v1/chat", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise refusal(response)
        events = await sse_events(response)
    for event, data in events:
        if event == "error":
            raise RequestFailed(f"stream error {json.loads(data).get('error')}", data[:300])
    done = [data for event, data in events if event == "done"]
    if len(done) != 1:
        raise RequestFailed("stream without one done event", str(events[-3:])[:300])
    answered.response_ids.append(json.loads(done[0])["id"])


async def chat_openai(
    client: httpx.AsyncClient, i: int, max_tokens: int, answered: Answered, model: str
) -> None:
    body = {"model": model, "messages": messages(i), "max_tokens": max_tokens}
    response = await client.post("/v1/chat/completions", json=body, headers={"X-KoproGo-Context": CONTEXT})
    if response.status_code != 200:
        raise refusal(response)
    answer = response.json()
    if not answer["choices"] or answer["choices"][0]["finish_reason"] is None:
        raise RequestFailed("completion without a choice", response.text[:300])
    answered.response_ids.append(answer["id"].removeprefix("chatcmpl-"))


async def stream_openai(
    client: httpx.AsyncClient, i: int, max_tokens: int, answered: Answered, model: str
) -> None:
    body = {"model": model, "messages": messages(i), "max_tokens": max_tokens, "stream": True}
    headers = {"X-KoproGo-Context": CONTEXT}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise refusal(response)
        events = await sse_events(response)
    datas = [data for _, data in events]
    if not datas or datas[-1] != "[DONE]":
        raise RequestFailed("stream without [DONE]", str(datas[-3:])[:300])
    chunks = [json.loads(d) for d in datas[:-1]]
    for chunk in chunks:
        if "error" in chunk:
            raise RequestFailed(f"stream error {chunk['error'].get('code')}", json.dumps(chunk)[:300])
    if not any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks):
        raise RequestFailed("stream without a finish_reason", str(datas[-3:])[:300])
    # Streamed chunks carry the request's id (routes_openai._chunks), not the completion's.
    answered.request_ids.append(chunks[0]["id"].removeprefix("chatcmpl-"))


async def stats(client: httpx.AsyncClient, i: int, max_tokens: int, answered: Answered, model: str) -> None:
    response = await client.get("/mcp/v1/stats", params={"context": CONTEXT})
    if response.status_code != 200:
        raise refusal(response)
    if "total_requests" not in response.json():
        raise RequestFailed("stats without total_requests", response.text[:300])


async def task(client: httpx.AsyncClient, i: int, max_tokens: int, answered: Answered, model: str) -> None:
    body = {"task_type": "predict_expenses", "input_data": {"history": HISTORY}, "copro_id": DEMO_COPRO_ID}
    response = await client.post("/mcp/v1/execute", json=body)
    if response.status_code != 202:
        raise refusal(response)
    task_id = str(response.json()["id"])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        shown = await client.get(f"/mcp/v1/tasks/{task_id}")
        if shown.status_code != 200:
            raise refusal(shown)
        status = shown.json()["status"]
        if status == "completed":
            answered.task_ids.append(task_id)
            return
        if status in TASK_FINAL:
            raise RequestFailed(f"task {status}", json.dumps(shown.json().get("error"))[:300])
    raise RequestFailed("task not done within 180 s", task_id)


# Kind -> (call, model). Edge chats run on the bundled model (slow on 2 shared cores: a third of
# the cycle); cloud ones on the instant backend, through the same four routes.
KINDS: dict[str, tuple[Call, str]] = {
    "chat": (chat_mcp, BUNDLED_MODEL_ID),
    "stream": (stream_mcp, BUNDLED_MODEL_ID),
    "chat_openai": (chat_openai, BUNDLED_MODEL_ID),
    "stream_openai": (stream_openai, BUNDLED_MODEL_ID),
    "cloud_chat": (chat_mcp, CLOUD_MODEL),
    "cloud_openai": (chat_openai, CLOUD_MODEL),
    "cloud_stream_openai": (stream_openai, CLOUD_MODEL),
    "stats": (stats, ""),
    "task": (task, ""),
}


async def one(
    kind: str, i: int, client: httpx.AsyncClient, args: argparse.Namespace, tally: Tally, answered: Answered
) -> None:
    started = time.monotonic()
    try:
        call, model = KINDS[kind]
        await call(client, i, args.max_tokens, answered, model)
    except RequestFailed as exc:
        tally.errors[exc.reason] += 1
        tally.examples.setdefault(exc.reason, exc.detail)
        return
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        reason = type(exc).__name__
        tally.errors[reason] += 1
        tally.examples.setdefault(reason, str(exc)[:300])
        return
    tally.ok += 1
    tally.latencies.append(time.monotonic() - started)


def group_memory(pid: int, pss: bool) -> tuple[float, float | None, int]:
    """RSS (and PSS when asked) of a process and all its children, summed; how many processes."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, None, 0
    rss, shared, alive = 0.0, 0.0, 0
    for p in procs:
        try:
            if pss:
                info = p.memory_full_info()
                rss += info.rss
                shared += info.pss
            else:
                rss += p.memory_info().rss
            alive += 1
        except psutil.NoSuchProcess:
            pass  # a PostgreSQL backend that ended between the listing and the read
    return rss, (shared if pss else None), alive


@dataclass
class Sampler:
    pids: dict[str, int]
    pss_of: set[str]
    series: dict[str, list[Sample]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def sample(self, elapsed: float) -> None:
        row: dict[str, Any] = {
            "elapsed_s": round(elapsed, 1),
            "utc": datetime.now(UTC).strftime("%H:%M:%S"),
            "load1": os.getloadavg()[0],
        }
        for name, pid in self.pids.items():
            rss, pss, alive = group_memory(pid, name in self.pss_of)
            if alive:
                self.series.setdefault(name, []).append((elapsed, rss))
                row[name] = round(rss / MiB, 2)
                if pss is not None:
                    self.series.setdefault(f"{name} (PSS)", []).append((elapsed, pss))
                    row[f"{name} (PSS)"] = round(pss / MiB, 2)
        self.rows.append(row)


async def soak(
    base_url: str, token: str, sampler: Sampler, args: argparse.Namespace
) -> tuple[dict[str, Tally], Answered, float]:
    tallies = {kind: Tally() for kind in KINDS}
    answered = Answered()
    total_s = args.minutes * 60
    # No cap on connections: an open loop must not queue in its own client's pool.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=240.0, limits=limits
    ) as client:
        start = time.monotonic()

        async def sampling() -> None:
            n = 0
            while True:
                await asyncio.to_thread(sampler.sample, time.monotonic() - start)
                n += 1
                await asyncio.sleep(max(0.0, start + n * args.sample_every - time.monotonic()))

        sampler_task = asyncio.create_task(sampling())
        in_flight: dict[asyncio.Task[None], str] = {}
        i = 0
        late = 0.0
        while (due := start + i / args.rate) < start + total_s:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                late = max(late, now - due)
            kind = args.cycle[i % len(args.cycle)]
            tallies[kind].sent += 1
            t = asyncio.create_task(one(kind, i, client, args, tallies[kind], answered))
            in_flight[t] = kind
            t.add_done_callback(lambda done: in_flight.pop(done, None))
            i += 1
            if i % 600 == 0:
                errors = sum(sum(t.errors.values()) for t in tallies.values())
                log(
                    f"{(time.monotonic() - start) / 60:.1f} min: {i} requests sent, {len(in_flight)} in flight, "
                    f"{errors} errors, load {os.getloadavg()[0]:.2f}"
                )
        elapsed = time.monotonic() - start
        await asyncio.to_thread(sampler.sample, elapsed)  # the last sample, at the end of the load
        sampler_task.cancel()
        if in_flight:
            log(f"load over; waiting for {len(in_flight)} requests in flight")
            left = dict(in_flight)
            _, pending = await asyncio.wait(set(left), timeout=240)
            for t in pending:
                t.cancel()
                tallies[left[t]].errors["unfinished 240 s after the load (cancelled)"] += 1
    return tallies, answered, late


async def ledger_check(
    database_url: str, answered: Answered, timeout: float = 120.0
) -> dict[str, tuple[int, int]]:
    """How many of the answered chats (and completed tasks) the ledger holds as such: (found, expected)."""
    queries = {
        "chat answers (response ids)": (
            "SELECT count(*) FROM mcp_responses r JOIN mcp_requests q ON q.id = r.request_id "
            "WHERE r.id = ANY($1::uuid[]) AND r.delivered_at IS NOT NULL AND q.status = 'completed'",
            answered.response_ids,
        ),
        "streamed OpenAI chats (request ids)": (
            "SELECT count(*) FROM mcp_requests q JOIN mcp_responses r ON r.request_id = q.id "
            "WHERE q.id = ANY($1::uuid[]) AND r.delivered_at IS NOT NULL AND q.status = 'completed'",
            answered.request_ids,
        ),
        "grid tasks (completed)": (
            "SELECT count(*) FROM mcp_tasks WHERE id = ANY($1::uuid[]) AND status = 'completed'",
            answered.task_ids,
        ),
    }
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = {name: (await conn.fetchval(sql, ids), len(ids)) for name, (sql, ids) in queries.items()}
            if all(f == e for f, e in found.values()) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(2.0)
    finally:
        await conn.close()


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def pct(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) >= 2
        else (values[0] if values else float("nan"))
    )


def plot_title(minutes: float, rate: float, tolerance: float, started: datetime, load: float) -> str:
    return (
        f"bench/soak.py: RSS per process, {minutes:g} min at {rate:g} req/s (edge and cloud chats, "
        f"streamed or not, stats, grid tasks)\n{started:%Y-%m-%d %H:%M} UTC, median load average "
        f"{load:.2f} on {os.cpu_count()} CPUs; blue: the start and end windows (medians compared)\n"
        f"green band: ±{tolerance * 100:.0f} % of the start median; each panel on its own scale"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=1.0, help="requests started per second (open loop)")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="comma-separated request kinds to keep from the cycle (to tell which load a growth follows)",
    )
    args = parser.parse_args()
    kept = set(args.kinds.split(","))
    if unknown := kept - set(KINDS):
        parser.error(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    args.cycle = [kind for kind in CYCLE if kind in kept]
    args.out.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="koprogo-bench-soak-"))
    log(f"work folder {work}")
    stack: Stack | None = None
    backend = None
    # SIGTERM ends the run through `finally` like Ctrl-C, so the stack it started is stopped, not
    # orphaned (services, nats-server and PostgreSQL left running); a second one waits for that.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        backend, backend_base = start_instant_backend(work, 1)
        use_stack_environ(work, backend_base, None)
        stack = Stack(work / "data", gateway_port=free_port(), node_port=free_port(), log=log)
        stack.start()
        stack.wait_for_model(BUNDLED_MODEL_ID, timeout=120)
        stack.wait_for_model(CLOUD_MODEL, timeout=60)
        assert stack.dev_token is not None and stack.postgres is not None
        pids = stack_processes(stack)
        sampler = Sampler(pids, pss_of={"postgresql"})
        log(f"stack up ({', '.join(f'{n} {p}' for n, p in pids.items())}); load {os.getloadavg()}")
        started_utc = datetime.now(UTC)
        tallies, answered, late = asyncio.run(soak(stack.gateway_url, stack.dev_token, sampler, args))
        ledger = asyncio.run(ledger_check(stack.postgres.url, answered))
        dead = stack.dead_services()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stack is not None:
            stack.stop()
        if backend is not None:
            stop_process(backend)

    windows = windows_for(args.minutes * 60)
    verdicts = {name: verdict(name, s, windows, args.tolerance) for name, s in sampler.series.items()}
    loads = [row["load1"] for row in sampler.rows]
    title = plot_title(args.minutes, args.rate, args.tolerance, started_utc, statistics.median(loads))
    write_csv(args.out / "soak-rss.csv", sampler.rows)
    write_csv(
        args.out / "soak-summary.csv",
        [
            {
                "process": v.process,
                "start_mib": None if v.start_mib is None else round(v.start_mib, 2),
                "end_mib": None if v.end_mib is None else round(v.end_mib, 2),
                "max_mib": round(v.max_mib, 2),
                "change_pct": None if v.change is None else round(v.change * 100, 2),
                "slope_mib_per_hour": None
                if v.slope_mib_per_hour is None
                else round(v.slope_mib_per_hour, 2),
                "verdict": v.label,
            }
            for v in verdicts.values()
        ],
    )
    (args.out / "soak-rss.svg").write_text(draw_svg(sampler.series, verdicts, windows, title))

    print(
        f"\nMachine: {machine()}; {started_utc:%Y-%m-%d %H:%M} UTC; {args.minutes:g} min at {args.rate:g} req/s "
        f"(open loop; latest start {late:.2f} s behind schedule), max_tokens {args.max_tokens}, RSS every "
        f"{args.sample_every:g} s; load average (1 min) over the run: min {min(loads):.2f}, median "
        f"{statistics.median(loads):.2f}, max {max(loads):.2f}.\n"
    )
    print(
        f"Windows: warm-up 0-{windows.window_s / 60:g} min left out; start {windows.start[0] / 60:g}-"
        f"{windows.start[1] / 60:g} min; end {windows.end[0] / 60:g}-{windows.end[1] / 60:g} min (medians).\n"
    )
    print("| process | start (MiB) | end (MiB) | max (MiB) | change | slope after warm-up | verdict |")
    print("|---|---|---|---|---|---|---|")
    for v in verdicts.values():
        change = "n/a" if v.change is None else f"{v.change * 100:+.1f} %"
        start_mib = "n/a" if v.start_mib is None else f"{v.start_mib:.1f}"
        end_mib = "n/a" if v.end_mib is None else f"{v.end_mib:.1f}"
        slope = "n/a" if v.slope_mib_per_hour is None else f"{v.slope_mib_per_hour:+.2f} MiB/h"
        print(
            f"| {v.process} | {start_mib} | {end_mib} | {v.max_mib:.1f} | {change} | {slope} | **{v.label}** |"
        )
    print("\n| request | sent | ok | errors | P50 | P95 | max |")
    print("|---|---|---|---|---|---|---|")
    for kind, t in tallies.items():
        lat = t.latencies
        print(
            f"| {kind} | {t.sent} | {t.ok} | {sum(t.errors.values())} | {pct(lat, 50) * 1000:.0f} ms "
            f"| {pct(lat, 95) * 1000:.0f} ms | {max(lat, default=float('nan')) * 1000:.0f} ms |"
        )
    errors = [
        (kind, reason, n, t.examples.get(reason, ""))
        for kind, t in tallies.items()
        for reason, n in t.errors.items()
    ]
    print("\nErrors: " + ("none" if not errors else ""))
    for kind, reason, n, example in errors:
        print(f"* {kind}: {reason} x {n}; e.g. {example!r}")
    print(
        "\nLedger: "
        + "; ".join(f"{name}: {found} of {expected}" for name, (found, expected) in ledger.items())
    )
    print(f"Services that died: {dead or 'none'}")
    all_flat = all(v.flat for v in verdicts.values())
    ledger_ok = all(found == expected for found, expected in ledger.values())
    print(
        f"\n**{'every process flat' if all_flat else 'NOT FLAT: ' + ', '.join(v.process for v in verdicts.values() if not v.flat)}"
        f"; {'no errors' if not errors else f'{sum(n for _, _, n, _ in errors)} ERRORS'}; "
        f"{'every answer in the ledger' if ledger_ok else 'LEDGER MISMATCH'}**"
    )
    log(f"wrote {args.out / 'soak-rss.csv'}, {args.out / 'soak-summary.csv'}, {args.out / 'soak-rss.svg'}")
    return 0 if all_flat and not errors and ledger_ok and not dead else 1


if __name__ == "__main__":
    sys.exit(main())
