"""Benchmark: the gateway's CPU per chat, this tree's against another revision's, on one stack (issue 17).

    .venv/bin/python bench/gateway_cpu.py [--baseline 44bd42e] [--rounds 6] [--duration 12]
                                          [--connections 16] [--path /v1/chat/completions]

The stack of `bench/peer_proxy.py` (`Stack` as `koprogo up`, an `openai_compatible` deployment
answered at once by `bench/instant_openai.py`, rate limits raised out of the way but still
counted), whose gateway runs this tree's code, plus a second gateway on the same NATS and
PostgreSQL running `--baseline`'s `services/gateway/src` (extracted with `git archive`, put first
on `PYTHONPATH`; every other package is this tree's). `wrk` drives each gateway in turn, the
order alternating between rounds, so both see the same machine; each run's gateway process CPU
time (user + system, from /proc) is divided by the requests wrk completed. Prints each run, with
the 1-minute load average, and the medians.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from load import Target, drive, ensure_wrk
from support import (
    CLOUD_MODEL,
    baseline_source,
    load1,
    log,
    median,
    parse_ints,
    start_instant_backend,
    start_process,
    stop_process,
    use_stack_environ,
    wait_http,
)

from koprogo_cli.ports import free_port
from koprogo_cli.stack import Stack

GATEWAY_SRC = "services/gateway/src"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default="HEAD", help="the git revision to compare this tree with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=12, help="seconds per wrk run")
    parser.add_argument("--connections", type=parse_ints, default=[16])
    parser.add_argument("--path", default="/v1/chat/completions", help="the chat route wrk posts to")
    args = parser.parse_args()

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="koprogo-bench-gateway-cpu-"))
    log(f"work folder {work}")
    baseline_src = baseline_source(args.baseline, GATEWAY_SRC, work)
    started: list[subprocess.Popen[bytes]] = []
    stack: Stack | None = None
    try:
        backend, backend_base = start_instant_backend(work, 2)
        started.append(backend)
        use_stack_environ(work, backend_base, 16)
        stack = Stack(work / "data", gateway_port=free_port(), node_port=free_port(), log=log)
        stack.start()
        stack.wait_for_model(CLOUD_MODEL, timeout=60)
        assert stack.dev_token is not None
        this_tree = next(s for s in stack.services if s.name == "gateway")
        assert this_tree.proc is not None
        # The same gateway settings (NATS identity, secrets, database), its own port and log.
        port = free_port()
        baseline = start_process(
            this_tree.argv,
            {
                **this_tree.env,
                "GATEWAY_PORT": str(port),
                "PYTHONPATH": str(baseline_src),
                "LOG_FILE": str(work / "baseline-gateway.log"),
            },
            work / "baseline-gateway.stderr.log",
        )
        started.append(baseline)
        wait_http(
            f"http://127.0.0.1:{port}/ready",
            baseline,
            "baseline gateway",
            60,
            work / "baseline-gateway.stderr.log",
        )
        targets = [
            Target(
                f"baseline ({args.baseline})",
                f"http://127.0.0.1:{port}{args.path}",
                stack.dev_token,
                {"gateway": baseline.pid},
            ),
            Target(
                "this tree",
                f"{stack.gateway_url}{args.path}",
                stack.dev_token,
                {"gateway": this_tree.proc.pid},
            ),
        ]
        for target in targets:  # warm-up: connections, lazy imports, caches
            drive(target, wrk, max(args.connections), 3, {})
            target.cpu_ms.clear()
        print(
            "| connections | round | gateway | req/s | P50 | non-2xx | CPU ms per chat | load average (1 min) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for round_no in range(args.rounds):
            for connections in args.connections:
                for target in targets if round_no % 2 == 0 else targets[::-1]:
                    load = load1()
                    result = drive(target, wrk, connections, args.duration, {})
                    cpu = target.cpu_ms[connections]["gateway"][-1]
                    print(
                        f"| {connections} | {round_no + 1} | {target.name} | {result.rps:.1f} | "
                        f"{result.p50_ms:.1f} ms | {result.status_errors} | {cpu:.3f} | {load} |",
                        flush=True,
                    )
        print()
        for connections in args.connections:
            base = median(targets[0].cpu_ms[connections]["gateway"])
            for target in targets:
                spent = median(target.cpu_ms[connections]["gateway"])
                print(
                    f"{connections} connections, {target.name}: median {spent:.3f} ms of CPU per chat "
                    f"({spent / base:.2f}x the baseline)"
                )
    finally:
        for proc in reversed(started):
            stop_process(proc)
        if stack is not None:
            stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
