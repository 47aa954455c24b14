"""Benchmark: KoproGo's `/v1/chat/completions` vs the LiteLLM proxy, same backend, same load, one run (issue 17).

    .venv/bin/python bench/peer_proxy.py [--rounds 3] [--duration 20] [--connections 1,16]
                                         [--litellm-workers 1,2] [--cloud-concurrency 16]

* LiteLLM: `litellm[proxy]==1.80.0` in the benchmark's own virtualenv (`bench/.venv-litellm`,
  created and filled here when missing; never the project's `.venv`; never 1.82.7/1.82.8, which
  carried a credential stealer), one proxy per `--litellm-workers` count, configured by
  `bench/peer_proxy_litellm.yaml` (one model name, a master key, no database, so no spend logs).
* KoproGo: the real stack (`koprogo_cli.stack.Stack`: embedded nats-server with fsynced JetStream
  and PostgreSQL, every service its own process, as `koprogo up` runs it) with an
  `openai_compatible` cloud deployment serving `gpt-4o-mini` from the same backend; the rate
  limits raised out of the way (still counted exactly: the counters' compare-and-set), called
  with the dev token.
* Backend: `bench/instant_openai.py`, a raw asyncio server answering every chat at once with a
  fixed completion and a `usage` block; measured alone first, to show it is not the bottleneck.
* Load: `wrk` (Debian: `apt-get install -y wrk`) with `bench/peer_proxy.lua` (the same POST body
  for both), one wrk thread, at each connection count, the targets interleaved within each
  round (the order rotating between rounds) so that all see the same machine state. LiteLLM's
  workers share one listening socket, and the kernel may give all of a wrk run's connections to
  one of them: a run where one worker did over 80 % of the workers' CPU is done again (up to 3
  runs; `drive_balanced`), so the peer is not measured at one worker's speed by chance.
* After the rounds: every chat KoproGo answered must be stored and projected: `mcp_requests`
  rows (and `completed` ones) against wrk's completed requests, with as many more allowed as
  requests were in flight at the cut-offs.
* CPU per request: user+system CPU time of each process (and its children) over each round,
  divided by the requests of the round: where the time goes on each side.

Prints Markdown tables (bench/README.md has the latest results).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from load import Target, WrkResult, drive, ensure_wrk, run_wrk
from support import (
    BENCH,
    CLOUD_MODEL,
    cpu_total,
    fsync_ms,
    log,
    machine,
    median,
    parse_ints,
    settled_rows,
    stack_processes,
    start_instant_backend,
    start_process,
    stop_process,
    use_stack_environ,
    wait_http,
)

from koprogo_cli.ports import free_port
from koprogo_cli.stack import Stack

LITELLM_VERSION = "1.80.0"
# Releases that carried a credential stealer: never installed, even if asked for.
LITELLM_COMPROMISED = {"1.82.7", "1.82.8"}
LITELLM_MASTER_KEY = "sk-peer-proxy-bench"


def ensure_litellm(venv: Path, version: str) -> Path:
    """The `litellm` command of `venv`, at `version`, installed there when missing."""
    if version in LITELLM_COMPROMISED:
        sys.exit(f"litellm {version} carried a credential stealer: use {LITELLM_VERSION}")
    python = venv / "bin" / "python"
    litellm = venv / "bin" / "litellm"
    if not python.exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if installed != version or not litellm.exists():
        log(f"installing litellm[proxy]=={version} into {venv} (installed: {installed or 'none'})")
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={version}"], check=True)
    return litellm


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--connections", type=parse_ints, default=[1, 16])
    parser.add_argument("--litellm-workers", type=parse_ints, default=[1, 2])
    parser.add_argument("--litellm-version", default=LITELLM_VERSION)
    parser.add_argument("--litellm-venv", type=Path, default=BENCH / ".venv-litellm")
    parser.add_argument("--backend-processes", type=int, default=2)
    parser.add_argument(
        "--cloud-concurrency",
        type=int,
        default=16,
        help="the KoproGo deployment's concurrent provider calls (its default is 4)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load per target before the rounds")
    args = parser.parse_args()

    wrk = ensure_wrk()
    litellm = ensure_litellm(args.litellm_venv, args.litellm_version)
    work = Path(tempfile.mkdtemp(prefix="koprogo-bench-peer-"))
    log(f"work folder {work}")
    disk_ms = fsync_ms(work)
    log(f"a fsynced 4 KiB write in the work folder: {disk_ms:.2f} ms (median of 200)")
    started: list[subprocess.Popen[bytes]] = []
    stack: Stack | None = None
    try:
        # The backend, alone first: its capacity bounds what either proxy can show.
        backend, backend_base = start_instant_backend(work, args.backend_processes)
        started.append(backend)
        backend_alone = run_wrk(wrk, f"{backend_base}/chat/completions", "none", 16, 5)
        log(
            f"backend alone, 16 connections: {backend_alone.rps:.0f} req/s, P50 {backend_alone.p50_ms:.2f} ms"
        )

        targets: list[Target] = []
        for workers in args.litellm_workers:
            port = free_port()
            logfile = work / f"litellm-{workers}w.log"
            proc = start_process(
                [
                    str(litellm),
                    "--config",
                    str(BENCH / "peer_proxy_litellm.yaml"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--num_workers",
                    str(workers),
                    "--telemetry",
                    "False",
                ],
                {
                    **os.environ,
                    "BENCH_BACKEND_BASE": backend_base,
                    "BENCH_BACKEND_KEY": "sk-none",
                    "BENCH_LITELLM_MASTER_KEY": LITELLM_MASTER_KEY,
                    # The model prices bundled with the package, not fetched from GitHub at start.
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "LITELLM_LOG": "ERROR",
                },
                logfile,
            )
            started.append(proc)
            wait_http(
                f"http://127.0.0.1:{port}/health/liveliness",
                proc,
                f"LiteLLM ({workers} workers)",
                180,
                logfile,
            )
            targets.append(
                Target(
                    f"LiteLLM {args.litellm_version}, {workers} worker{'s' if workers > 1 else ''}",
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    LITELLM_MASTER_KEY,
                    {f"litellm ({workers}w)": proc.pid},
                    workers=workers,
                )
            )
            log(f"LiteLLM with {workers} worker(s) ready on port {port}")

        use_stack_environ(work, backend_base, args.cloud_concurrency)
        stack = Stack(work / "data", gateway_port=free_port(), node_port=free_port(), log=log)
        stack.start()
        stack.wait_for_model(CLOUD_MODEL, timeout=60)
        assert stack.dev_token is not None and stack.postgres is not None
        koprogo_processes = stack_processes(stack)
        koprogo = Target(
            "KoproGo", f"{stack.gateway_url}/v1/chat/completions", stack.dev_token, koprogo_processes
        )
        targets.insert(1, koprogo)  # LiteLLM, KoproGo, LiteLLM, ...
        backend_pids = {"backend": backend.pid}

        for target in targets:  # warm-up: connections, lazy imports, caches, the first fsyncs
            result = drive(target, wrk, max(args.connections), args.warmup, backend_pids)
            log(f"warm-up {target.name}: {result.requests} requests, {result.status_errors} errors")
        for target in targets:
            target.cpu_ms.clear()
            target.busy.clear()
            target.busiest_share.clear()

        for round_no in range(args.rounds):
            order = targets[round_no % len(targets) :] + targets[: round_no % len(targets)]
            for connections in args.connections:
                for target in order:
                    result = drive_balanced(target, wrk, connections, args.duration, backend_pids)
                    target.results.setdefault(connections, []).append(result)
                    log(
                        f"round {round_no + 1}, {connections} conn, {target.name}: {result.rps:.1f} req/s, "
                        f"P50 {result.p50_ms:.2f} ms, P99 {result.p99_ms:.2f} ms, "
                        f"{result.status_errors} non-2xx, {result.socket_errors} socket errors"
                    )

        total, completed, pending, failed, responses = settled_rows(stack.postgres.url)
        dead = stack.dead_services()
    finally:
        if stack is not None:
            stack.stop()
        for proc in reversed(started):
            stop_process(proc)

    litellms = [t for t in targets if t is not koprogo]
    print(
        f"\nMachine: {machine()}; a fsynced 4 KiB write {disk_ms:.2f} ms; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; wrk 1 thread, "
        f"{args.rounds} rounds x {args.duration:.0f} s per target and connection count; "
        f"KoproGo cloud deployment concurrency {args.cloud_concurrency}.\n"
    )
    print(
        f"Backend alone (wrk, 16 connections, 5 s): **{backend_alone.rps:.0f} req/s**, "
        f"P50 {backend_alone.p50_ms:.2f} ms, P99 {backend_alone.p99_ms:.2f} ms.\n"
    )
    print("| connections | round | target | req/s | P50 | P99 | non-2xx | socket errors |")
    print("|---|---|---|---|---|---|---|---|")
    for connections in args.connections:
        for round_no in range(args.rounds):
            for target in targets:
                r = target.results[connections][round_no]
                print(
                    f"| {connections} | {round_no + 1} | {target.name} | {r.rps:.1f} | {r.p50_ms:.2f} ms "
                    f"| {r.p99_ms:.2f} ms | {r.status_errors} | {r.socket_errors} |"
                )

    print("\nMedians over the rounds, and KoproGo / the best LiteLLM (by req/s) at each connection count:\n")
    print("| connections | target | req/s | P50 | P99 | KoproGo/LiteLLM req/s | KoproGo/LiteLLM P50 |")
    print("|---|---|---|---|---|---|---|")
    for connections in args.connections:

        def med(t: Target, attr: Callable[[WrkResult], float], c: int = connections) -> float:
            return median([attr(r) for r in t.results[c]])

        best = max(litellms, key=lambda t: med(t, lambda r: r.rps))
        for target in targets:
            ratio = ""
            if target is koprogo:
                ratio = (
                    f"| **{med(koprogo, lambda r: r.rps) / med(best, lambda r: r.rps):.2f}x** "
                    f"| **{med(koprogo, lambda r: r.p50_ms) / med(best, lambda r: r.p50_ms):.2f}x** |"
                )
            else:
                ratio = "| | |"
            print(
                f"| {connections} | {target.name} | {med(target, lambda r: r.rps):.1f} "
                f"| {med(target, lambda r: r.p50_ms):.2f} ms | {med(target, lambda r: r.p99_ms):.2f} ms {ratio}"
            )

    print("\nCPU time per request (process and its children, user+system, median over the rounds):\n")
    for connections in args.connections:
        print(f"\n{connections} connection(s):\n")
        print("| target | process | CPU ms / request |")
        print("|---|---|---|")
        for target in targets:
            per = target.cpu_ms.get(connections, {})
            for name, values in sorted(per.items(), key=lambda kv: -median(kv[1])):
                print(f"| {target.name} | {name} | {median(values):.2f} |")
            served = cpu_total(per)
            print(
                f"| {target.name} | **all but wrk** | **{served:.2f}** "
                f"(machine busy {median(target.busy.get(connections, [])):.0f} % of {os.cpu_count()} CPUs) |"
            )

    allowed = koprogo.sent + koprogo.in_flight
    durable = koprogo.sent <= completed <= total <= allowed and pending == 0
    print(
        f"\nKoproGo durability: wrk completed {koprogo.sent} chats (warm-up included; up to "
        f"{koprogo.in_flight} more in flight at the cut-offs); `mcp_requests`: {total} rows, "
        f"{completed} completed, {pending} pending, {failed} failed (wrk's connections closed at the "
        f"cut-offs cancel their chats); `mcp_responses`: {responses} rows; "
        f"non-2xx: {sum(r.status_errors for rs in koprogo.results.values() for r in rs)}; "
        f"services that died: {dead or 'none'}. **{'every answered chat stored and projected' if durable else 'MISMATCH'}**"
    )
    for t in litellms:
        if t.workers > 1:
            shares = [f"{x:.0%}" for c in args.connections if c > 1 for x in t.busiest_share.get(c, [])]
            print(
                f"{t.name}: the busiest worker's share of the workers' CPU per kept run {', '.join(shares)}; "
                f"runs done again because one worker took over {UNBALANCED_SHARE:.0%}: {t.reruns}"
            )
    print(
        "LiteLLM non-2xx: "
        + ", ".join(
            f"{t.name}: {sum(r.status_errors for rs in t.results.values() for r in rs)}" for t in litellms
        )
    )
    return 0 if durable else 1


# A run where one of LiteLLM's workers did more than this share of the workers' CPU.
UNBALANCED_SHARE = 0.8
BALANCE_TRIES = 3


def drive_balanced(
    target: Target, wrk: str, connections: int, seconds: float, extra: dict[str, int]
) -> WrkResult:
    """`drive`, except for a server of several workers at several connections: its workers share
    one listening socket, and the kernel may hand all of wrk's connections to one of them, which
    then serves at one worker's speed while the other idles. Such a run is done again, up to
    `BALANCE_TRIES` runs, so the peer is measured with the workers it was given (never KoproGo)."""
    for attempt in range(1, BALANCE_TRIES + 1):
        result = drive(target, wrk, connections, seconds, extra)
        if target.workers == 1 or connections == 1:
            return result
        share = target.busiest_share[connections][-1]
        if share <= UNBALANCED_SHARE or attempt == BALANCE_TRIES:
            if share > UNBALANCED_SHARE:
                log(f"{target.name}: still unbalanced after {attempt} runs; kept")
            return result
        log(
            f"{target.name}, {connections} conn: one worker did {share:.0%} of the workers' CPU "
            f"({result.rps:.1f} req/s); run again"
        )
        target.forget_last(connections)
        target.reruns += 1
    raise AssertionError("unreachable")


if __name__ == "__main__":
    sys.exit(main())
