"""Benchmark: the cloud worker's CPU per chat on peer_proxy.py's path, optionally against a baseline tree (issue 17).

    .venv/bin/python bench/cloud_worker_cpu.py [--rounds 3] [--duration 20] [--connections 16]
                                               [--baseline-src DIR]

The KoproGo side of `bench/peer_proxy.py` alone (no LiteLLM): `bench/instant_openai.py` as the
backend, the real stack (`Stack`) with one `openai_compatible` deployment on it, `wrk` with
`bench/peer_proxy.lua`. With `--baseline-src` (a folder holding another `koprogo_cloud`
package, e.g. `git archive HEAD~1 services/inference-cloud/src | tar -x -C /tmp/base` then
`--baseline-src /tmp/base/services/inference-cloud/src`), a second stack runs beside the first,
its cloud worker imported from there (`PYTHONPATH`), and wrk drives the two in turn, the order
rotating between rounds: both measured in the same conditions. Prints, per stack, the median
over the rounds of each process's CPU time per request (user+system ÷ wrk's requests, as
peer_proxy.py counts it), and the load average at each run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from peer_proxy import (
    BENCH,
    CLOUD_MODEL,
    RATE_LIMIT,
    WRK,
    Target,
    drive,
    ensure_wrk,
    log,
    machine,
    median,
    parse_ints,
    start_process,
    stop_process,
    wait_http,
)

from koprogo_cli.embedded import free_port
from koprogo_cli.stack import Stack


def start_stack(work: Path, name: str, cloud_src: Path | None) -> tuple[Stack, Target]:
    """A stack whose cloud worker imports `koprogo_cloud` from `cloud_src` (None: the installed one)."""
    saved = os.environ.get("PYTHONPATH")
    if cloud_src is not None:
        os.environ["PYTHONPATH"] = str(cloud_src)
    try:
        stack = Stack(work / name, gateway_port=free_port(), node_port=free_port(), log=log)
        stack.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    stack.wait_for_model(CLOUD_MODEL, timeout=60)
    assert stack.dev_token is not None and stack.nats is not None and stack.postgres is not None
    assert stack.nats.proc is not None and stack.postgres.proc is not None
    processes = {s.name: s.proc.pid for s in stack.services if s.proc is not None}
    processes["nats-server"] = stack.nats.proc.pid
    processes["postgresql"] = stack.postgres.proc.pid
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
        "--baseline-src", type=Path, default=None, help="a folder with another koprogo_cloud package"
    )
    args = parser.parse_args()

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="koprogo-bench-cloud-cpu-"))
    log(f"work folder {work}")
    stacks: list[Stack] = []
    backend = None
    try:
        backend_port = free_port()
        backend = start_process(
            [
                sys.executable,
                str(BENCH / "instant_openai.py"),
                "--port",
                str(backend_port),
                "--processes",
                "2",
            ],
            dict(os.environ),
            work / "backend.log",
        )
        wait_http(f"http://127.0.0.1:{backend_port}/health", backend, "backend", 30, work / "backend.log")
        deployments = work / "deployments.toml"
        deployments.write_text(
            f"""[[deployments]]
id = "bench-backend"
provider = "openai_compatible"
base_url = "http://127.0.0.1:{backend_port}/v1"
api_key_env = ""
models = {{ "{CLOUD_MODEL}" = "{CLOUD_MODEL}" }}
timeout_s = 60
concurrency = {args.cloud_concurrency}
"""
        )
        os.environ.pop("NATS_URL", None)
        os.environ.pop("DATABASE_URL", None)
        os.environ["CLOUD_DEPLOYMENTS_FILE"] = str(deployments)
        os.environ["RATE_LIMIT_PER_COPRO"] = RATE_LIMIT
        os.environ["RATE_LIMIT_PER_USER"] = RATE_LIMIT
        targets: list[Target] = []
        if args.baseline_src is not None:
            stack, target = start_stack(work, "baseline", args.baseline_src.resolve())
            stacks.append(stack)
            targets.append(target)
        stack, target = start_stack(work, "this tree", None)
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
                    load = Path("/proc/loadavg").read_text().split()[0]
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

    print(f"\nMachine: {machine()}; wrk 1 thread, {args.rounds} rounds x {args.duration} s per stack.")
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
        rps = [f"{median([r.rps for r in t.results[connections]]):.1f}" for t in targets]
        print("| req/s | " + " | ".join(rps) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
