"""The stack benchmarks' load: wrk's runs, and what each process spent on them.

* `ensure_wrk` finds Debian's wrk; `run_wrk` runs it (one thread, `bench/peer_proxy.lua`'s POST)
  and parses its summary (`WrkResult`).
* `drive` runs wrk against a `Target` and records, per run, each process's user+system CPU time
  per request (`cpu_by_process`, `cpu_delta`), the machine's busy share, and for a server with
  several workers on one socket the busiest worker's share of their CPU.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import psutil
from support import BENCH, WRK


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk is missing: install it (Debian/Ubuntu: `sudo apt-get install -y wrk`) and run again")
    return wrk


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    status_errors: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_wrk(wrk: str, url: str, token: str, connections: int, seconds: float) -> WrkResult:
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{round(seconds)}s",
            "--timeout",
            "30s",
            "-s",
            str(BENCH / "peer_proxy.lua"),
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        sys.exit(f"wrk printed no summary:\n{out.stdout}")
    s = json.loads(line.removeprefix("WRK_JSON "))
    return WrkResult(
        requests=s["requests"],
        seconds=s["duration_us"] / 1e6,
        p50_ms=s["p50_us"] / 1000,
        p90_ms=s["p90_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
        status_errors=s["status_errors"],
        socket_errors=s["connect_errors"] + s["read_errors"] + s["write_errors"] + s["timeouts"],
    )


def cpu_by_process(pid: int) -> dict[tuple[int, float], float]:
    """User + system CPU of a process and each of its living children (LiteLLM's workers,
    PostgreSQL's backends), keyed by (pid, start time)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    times = {}
    for p in procs:
        try:
            t = p.cpu_times()
            times[(p.pid, p.create_time())] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return times


def cpu_delta(before: dict[tuple[int, float], float], after: dict[tuple[int, float], float]) -> float:
    """CPU spent between two snapshots by the processes alive at the second: a child that started in
    between counts whole; one that ended in between is missed (PostgreSQL's short-lived workers)."""
    return sum(cpu - before.get(key, 0.0) for key, cpu in after.items())


@dataclass
class Target:
    name: str
    url: str
    token: str
    # Process groups whose CPU is counted: name -> pid.
    processes: dict[str, int]
    results: dict[int, list[WrkResult]] = field(default_factory=dict)
    # connections -> process name -> CPU ms per request, one value per round.
    cpu_ms: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    # connections -> the machine's busy CPU share (%) over each round.
    busy: dict[int, list[float]] = field(default_factory=dict)
    sent: int = 0  # requests wrk completed, warm-up included
    in_flight: int = 0  # requests possibly sent but not counted at the cut-offs (sum of connections)
    # Worker processes sharing one listening socket (LiteLLM's `--num_workers`): 1 for others.
    workers: int = 1
    # connections -> the busiest worker's share of the workers' CPU over each run (workers > 1).
    busiest_share: dict[int, list[float]] = field(default_factory=dict)
    reruns: int = 0  # runs done again because one worker served them all

    def forget_last(self, connections: int) -> None:
        """Drop the figures of the last run at `connections` (a run done again)."""
        for values in (*self.cpu_ms.get(connections, {}).values(), self.busy.get(connections, [])):
            if values:
                values.pop()
        if self.busiest_share.get(connections):
            self.busiest_share[connections].pop()


def drive(target: Target, wrk: str, connections: int, seconds: float, extra: dict[str, int]) -> WrkResult:
    pids = {**target.processes, **extra}
    before = {name: cpu_by_process(pid) for name, pid in pids.items()}
    # wrk is the only child that ends during the run: the children's usage grows by its CPU alone.
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    psutil.cpu_percent(None)  # starts the machine-wide busy measure
    result = run_wrk(wrk, target.url, target.token, connections, seconds)
    busy = psutil.cpu_percent(None)
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = {name: cpu_by_process(pid) for name, pid in pids.items()}
    spent = {name: cpu_delta(before[name], after[name]) for name in pids}
    if target.workers > 1:
        # The first process group is the server: its busiest children are its workers.
        root = next(iter(target.processes.values()))
        group = next(iter(target.processes))
        by_child = sorted(
            (cpu - before[group].get(key, 0.0) for key, cpu in after[group].items() if key[0] != root),
            reverse=True,
        )[: target.workers]
        # No workers left (the server died): 0, and the run's own figures tell the failure.
        share = by_child[0] / max(sum(by_child), 1e-9) if by_child else 0.0
        target.busiest_share.setdefault(connections, []).append(share)
    spent[WRK] = (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
    target.busy.setdefault(connections, []).append(busy)
    target.sent += result.requests
    target.in_flight += connections
    per_process = target.cpu_ms.setdefault(connections, {})
    for name, seconds_spent in spent.items():
        per_process.setdefault(name, []).append(seconds_spent * 1000 / max(result.requests, 1))
    return result
