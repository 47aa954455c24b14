"""Benchmark: the cloud worker's CPU per chat on peer_proxy.py's path, optionally against a baseline revision (issue 17).

    .venv/bin/python bench/cloud_worker_cpu.py [--rounds 3] [--duration 20] [--connections 16]
                                               [--baseline REV]

The KoproGo side of `bench/peer_proxy.py` alone (no LiteLLM): `bench/instant_openai.py` as the
backend, the real stack (`Stack`) with one `openai_compatible` deployment on it, `wrk` with
`bench/peer_proxy.lua`. With `--baseline` (a git revision, e.g. `HEAD~1`), a second stack runs
beside the first, its services importing every package of the product from that revision
(`libs/*/src`, `services/*/src`, `cli/src` extracted with `git archive` and put first on
`PYTHONPATH`; the stack's launcher in this process is this tree's), and wrk drives the two in turn, the order rotating between
rounds: both measured in the same conditions. With `--nats-sync both`, a second stack runs the
same way beside this tree's, its nats-server without `sync_interval: always` (nats-server's
default: a write is acknowledged before it reaches the disk, which is fsynced every two minutes):
what the durable writes cost on this machine's disk, which differs by several times between
VMs of the same kind. Prints, per stack, the median over the rounds of each process's CPU time
per request (user+system ÷ wrk's requests, as peer_proxy.py counts it), the requests per second,
the load average at each run, and the disk's fsync time (`support.fsync_ms`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from load import Target, drive, ensure_wrk
from support import (
    CLOUD_MODEL,
    WRK,
    baseline_source,
    cpu_total,
    fsync_ms,
    load1,
    log,
    machine,
    median,
    parse_ints,
    stack_processes,
    start_instant_backend,
    stop_process,
    use_stack_environ,
)

from koprogo_cli import embedded_nats
from koprogo_cli.ports import free_port
from koprogo_cli.stack import Stack

# Every package a service imports (the product's `src` folders), as the baseline's are extracted.
PACKAGE_SRCS = (
    "libs/koprogo-shared/src",
    "services/gateway/src",
    "services/router/src",
    "services/inference-edge/src",
    "services/inference-cloud/src",
    "services/ledger/src",
    "services/grid-scheduler/src",
    "cli/src",
)
SYNC_ALWAYS = "  sync_interval: always\n"


def start_stack(
    data_dir: Path, name: str, sources: list[Path] | None, *, sync_always: bool = True
) -> tuple[Stack, Target]:
    """A stack whose services import the product's packages from `sources` (None: the installed
    ones), its nats-server fsyncing every write or, `sync_always=False`, with nats-server's default."""
    saved = os.environ.get("PYTHONPATH")
    if sources is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(str(s) for s in sources)
    config = embedded_nats.NATS_CONFIG
    if not sync_always:
        # The benchmark's own change, for this stack's start only: the shipped configuration
        # always fsyncs (docs/decisions.md), and no setting of the product turns it off.
        if SYNC_ALWAYS not in config:
            raise SystemExit(
                "embedded_nats.NATS_CONFIG no longer sets sync_interval as this benchmark expects"
            )
        embedded_nats.NATS_CONFIG = config.replace(SYNC_ALWAYS, "")
    stack = Stack(data_dir, gateway_port=free_port(), node_port=free_port(), log=log)
    try:
        stack.start()
        stack.wait_for_model(CLOUD_MODEL, timeout=60)
    except BaseException:
        # Its services run in their own sessions: a stack that failed to start must not outlive us.
        stack.stop()
        raise
    finally:
        embedded_nats.NATS_CONFIG = config
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    assert stack.dev_token is not None
    processes = stack_processes(stack)
    target = Target(name, f"{stack.gateway_url}/v1/chat/completions", stack.dev_token, processes)
    return stack, target


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--connections", type=parse_ints, default=[16])
    parser.add_argument("--cloud-concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--baseline", default=None, help="a git revision whose services run beside this tree's"
    )
    parser.add_argument(
        "--nats-sync",
        choices=("always", "both"),
        default="always",
        help="both: a second stack whose nats-server does not fsync every write",
    )
    args = parser.parse_args()

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="koprogo-bench-cloud-cpu-"))
    log(f"work folder {work}")
    disk_ms = fsync_ms(work)
    log(f"a fsynced 4 KiB write in the work folder: {disk_ms:.2f} ms (median of 200)")
    stacks: list[Stack] = []
    backend = None
    try:
        backend, backend_base = start_instant_backend(work, 2)
        use_stack_environ(work, backend_base, args.cloud_concurrency)
        targets: list[Target] = []
        if args.baseline is not None:
            sources = [baseline_source(args.baseline, src, work) for src in PACKAGE_SRCS]
            stack, target = start_stack(work / "baseline", f"baseline ({args.baseline})", sources)
            stacks.append(stack)
            targets.append(target)
        stack, target = start_stack(work / "this tree", "this tree", None)
        stacks.append(stack)
        targets.append(target)
        if args.nats_sync == "both":
            stack, target = start_stack(work / "no fsync", "this tree, no fsync", None, sync_always=False)
            stacks.append(stack)
            targets.append(target)
        backend_pids = {"backend": backend.pid}
        for target in targets:
            result = drive(target, wrk, max(args.connections), args.warmup, backend_pids)
            log(f"warm-up {target.name}: {result.requests} requests, {result.status_errors} errors")
            target.cpu_ms.clear()
            target.busy.clear()
        loads: list[str] = []
        for round_no in range(args.rounds):
            order = targets[round_no % len(targets) :] + targets[: round_no % len(targets)]
            for connections in args.connections:
                for target in order:
                    result = drive(target, wrk, connections, args.duration, backend_pids)
                    target.results.setdefault(connections, []).append(result)
                    load = load1()
                    loads.append(load)
                    cloud = target.cpu_ms[connections]["cloud"][-1]
                    log(
                        f"round {round_no + 1}, {connections} conn, {target.name}: {result.rps:.1f} req/s, "
                        f"P50 {result.p50_ms:.2f} ms, cloud worker {cloud:.3f} ms CPU/req, "
                        f"{result.status_errors} non-2xx, load average {load}"
                    )
    finally:
        for stack in stacks:
            stack.stop()
        if backend is not None:
            stop_process(backend)

    print(
        f"\nMachine: {machine()}; a fsynced 4 KiB write {disk_ms:.2f} ms; "
        f"wrk 1 thread, {args.rounds} rounds x {args.duration} s per stack."
    )
    print(f"Load average (1 min) after each run: {', '.join(loads)}\n")
    for connections in args.connections:
        print(
            f"\n{connections} connection(s), CPU ms per request, median over the rounds (each round's value):\n"
        )
        names = sorted({n for t in targets for n in t.cpu_ms[connections] if n != WRK})
        print("| process | " + " | ".join(t.name for t in targets) + " |")
        print("|---|" + "---|" * len(targets))
        for name in names:
            cells = []
            for t in targets:
                values = t.cpu_ms[connections].get(name, [])
                cells.append(f"{median(values):.3f} ({', '.join(f'{v:.2f}' for v in values)})")
            print(f"| {name} | " + " | ".join(cells) + " |")
        totals = [cpu_total(t.cpu_ms[connections], leave_out=(WRK, "backend")) for t in targets]
        print("| all but wrk and the backend | " + " | ".join(f"{v:.3f}" for v in totals) + " |")
        rps = [f"{median([r.rps for r in t.results[connections]]):.1f}" for t in targets]
        print("| req/s | " + " | ".join(rps) + " |")
        p50 = [f"{median([r.p50_ms for r in t.results[connections]]):.2f}" for t in targets]
        print("| P50 ms | " + " | ".join(p50) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
