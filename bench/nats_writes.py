"""Benchmark: what nats-server stores, fsyncs and spends per chat, the counters fsynced or not (issue 17).

    .venv/bin/python bench/nats_writes.py [--rounds 4] [--duration 15] [--connections 16] [--strace 8]

The KoproGo side of `bench/peer_proxy.py` alone: the same stack (`koprogo_cli.stack.Stack`,
embedded nats-server with `sync_interval: always`, every service its own process), the same
`openai_compatible` deployment on `bench/instant_openai.py`, the same wrk load
(`bench/peer_proxy.lua`), the rate limits raised out of the way but still counted. The
rate-limit counters' bucket is declared in turn as before issue 17's change (`default`: every
write fsynced) and as the setup step now declares it (`async`, `kv_buckets.ensure_rate_limit_bucket`),
in interleaved phases on the one stack, so both see the same machine. Per phase:

* nats-server's user+system CPU time ÷ chats answered;
* the messages each stream stored per chat (`last_seq` in `/jsz` before and after);
* with `--strace N` (seconds, per mode, before the phases; `strace` on PATH): the fsyncs per chat
  (`strace -f -c -e trace=fsync,fdatasync` attached to nats-server: it slows the server, so these
  phases are not timed).

After the phases every answered chat must be in the ledger (`mcp_requests`, completed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import load
import psutil
import support
from nats.js import api as js_api

from koprogo_cli.ports import free_port
from koprogo_cli.stack import Stack
from koprogo_shared.kv_buckets import bucket_stream, ensure_rate_limit_bucket, rate_limit_ttl_s
from koprogo_shared.nats_connection import connect_nats
from koprogo_shared.subjects import RATE_LIMIT_BUCKET

MODES = ("default", "async")


async def declare_counters(url: str, seed: Path, mode: str) -> str:
    """Declare the counters' bucket in `mode` (its counts are not kept: the limits are out of reach)."""
    nc, js = await connect_nats(url, "bench-nats-writes", nkey_seed_file=seed)
    try:
        stream = bucket_stream(RATE_LIMIT_BUCKET)
        current = js_api.PersistMode((await js.stream_info(stream)).config.persist_mode or "default")
        if current.value != mode:
            if mode == "default":  # as the setup step declared it before issue 17
                await js.delete_stream(stream)
                await js.create_key_value(
                    js_api.KeyValueConfig(
                        bucket=RATE_LIMIT_BUCKET,
                        history=1,
                        ttl=rate_limit_ttl_s(60),
                        storage=js_api.StorageType.FILE,
                    )
                )
            else:
                await ensure_rate_limit_bucket(js, rate_limit_ttl_s(60))
        info = await js.stream_info(stream)
        return js_api.PersistMode(info.config.persist_mode or "default").value
    finally:
        await nc.close()


def stored(monitor_port: int) -> dict[str, int]:
    """Each stream's last sequence number, from nats-server's `/jsz`."""
    url = f"http://127.0.0.1:{monitor_port}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=10) as response:
        data = json.load(response)
    return {
        stream["name"]: stream["state"]["last_seq"]
        for account in data.get("account_details", [])
        for stream in account.get("stream_detail", [])
    }


def per_chat(before: dict[str, int], after: dict[str, int], chats: int) -> dict[str, float]:
    return {
        name: (after[name] - before.get(name, 0)) / max(chats, 1)
        for name in sorted(after)
        if after[name] != before.get(name, 0)
    }


def fsyncs_per_chat(
    wrk: str, url: str, token: str, pid: int, connections: int, seconds: int, out: Path
) -> tuple[int, float]:
    tracer = subprocess.Popen(
        ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-p", str(pid), "-o", str(out)],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    result = load.run_wrk(wrk, url, token, connections, seconds)
    time.sleep(1)
    tracer.send_signal(2)
    tracer.wait(30)
    calls = sum(
        int(m.group(1))
        for m in re.finditer(
            r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?f(?:data)?sync$", out.read_text(), re.M
        )
    )
    return result.requests, calls / max(result.requests, 1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4, help="phases per mode, interleaved")
    parser.add_argument("--duration", type=int, default=15, help="seconds of wrk per phase")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--strace", type=int, default=8, help="seconds of strace-counted load per mode (0: none)"
    )
    args = parser.parse_args()
    if args.strace and shutil.which("strace") is None:
        sys.exit("strace is not on PATH (apt-get install -y strace), or pass --strace 0")
    wrk = load.ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="koprogo-bench-nats-writes-"))
    support.log(f"work folder {work}")
    backend, backend_base = support.start_instant_backend(work, 2)
    stack: Stack | None = None
    rows: list[dict[str, object]] = []
    fsyncs: dict[str, tuple[int, float]] = {}
    try:
        support.use_stack_environ(work, backend_base, 16)
        monitor_port = free_port()
        os.environ["NATS_MONITOR_PORT"] = str(monitor_port)
        stack = Stack(work / "data", gateway_port=free_port(), node_port=free_port(), log=support.log)
        stack.start()
        stack.wait_for_model(support.CLOUD_MODEL, timeout=60)
        assert stack.nats is not None and stack.nats.proc is not None and stack.dev_token is not None
        assert stack.postgres is not None
        url, seed = stack.nats.url, stack.nats_seed_files["admin"]
        nats_pid = stack.nats.proc.pid
        target = f"{stack.gateway_url}/v1/chat/completions"
        support.log(
            "the stack declared the counters' bucket: " + asyncio.run(declare_counters(url, seed, "async"))
        )
        load.run_wrk(wrk, target, stack.dev_token, args.connections, 3)  # warm-up

        for mode in MODES if args.strace else ():
            asyncio.run(declare_counters(url, seed, mode))
            time.sleep(1)
            fsyncs[mode] = fsyncs_per_chat(
                wrk,
                target,
                stack.dev_token,
                nats_pid,
                args.connections,
                args.strace,
                work / f"strace-{mode}.txt",
            )
            support.log(f"{mode}: {fsyncs[mode][1]:.2f} fsyncs per chat over {fsyncs[mode][0]} chats")

        server = psutil.Process(nats_pid)
        for round_no in range(args.rounds):
            for mode in MODES if round_no % 2 == 0 else tuple(reversed(MODES)):
                asyncio.run(declare_counters(url, seed, mode))
                time.sleep(2)
                before, cpu_before, load_before = stored(monitor_port), server.cpu_times(), os.getloadavg()[0]
                result = load.run_wrk(wrk, target, stack.dev_token, args.connections, args.duration)
                cpu_after = server.cpu_times()
                time.sleep(1)
                row: dict[str, object] = {
                    "round": round_no + 1,
                    "mode": mode,
                    "req/s": round(result.rps, 1),
                    "P50 ms": round(result.p50_ms, 1),
                    "errors": result.status_errors + result.socket_errors,
                    "nats CPU ms/chat": round(
                        (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system)
                        * 1000
                        / max(result.requests, 1),
                        3,
                    ),
                    "load": f"{load_before:.1f}-{os.getloadavg()[0]:.1f}",
                    "stored/chat": per_chat(before, stored(monitor_port), result.requests),
                }
                rows.append(row)
                support.log(json.dumps(row))
        total, completed, pending, failed, _ = support.settled_rows(stack.postgres.url)
    finally:
        if stack is not None:
            stack.stop()
        support.stop_process(backend)

    print(
        f"\n{support.machine()}; wrk 1 thread, {args.connections} connections, {args.duration} s per phase.\n"
    )
    print("| round | counters | req/s | P50 | nats-server CPU per chat | load average | stored per chat |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        streams = ", ".join(f"{k} {v:.2f}" for k, v in row["stored/chat"].items())  # type: ignore[attr-defined]
        print(
            f"| {row['round']} | {row['mode']} | {row['req/s']} | {row['P50 ms']} ms "
            f"| {row['nats CPU ms/chat']} ms | {row['load']} | {streams} |"
        )
    ratios = [
        float(a["nats CPU ms/chat"]) / float(d["nats CPU ms/chat"])  # type: ignore[arg-type]
        for d, a in (
            (
                next(r for r in rows if r["round"] == n and r["mode"] == "default"),
                next(r for r in rows if r["round"] == n and r["mode"] == "async"),
            )
            for n in range(1, args.rounds + 1)
        )
    ]
    for mode in MODES:
        cpu = [float(r["nats CPU ms/chat"]) for r in rows if r["mode"] == mode]  # type: ignore[arg-type]
        print(f"\n{mode}: nats-server CPU per chat, median {statistics.median(cpu):.2f} ms", end="")
        if mode in fsyncs:
            print(f"; {fsyncs[mode][1]:.2f} fsyncs per chat ({fsyncs[mode][0]} chats under strace)", end="")
    print(
        f"\nasync / default, per round: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}"
    )
    print(f"ledger: {total} requests, {completed} completed, {pending} pending, {failed} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
