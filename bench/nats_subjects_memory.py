"""Benchmark: nats-server's memory for a stream whose messages each have a subject of their own (issue 17).

    .venv/bin/python bench/nats_subjects_memory.py [--messages 120000] [--size 1200]

Two nats-servers (the project's embedded binary, JetStream on file storage with `sync_interval:
always`, as `koprogo up` runs it), each with one limits stream shaped like `KOPROGO_EVENTS`
(30 days, 2 GiB), fed the same number of messages of the same size in the same run, side by
side: **unique**, every message on a subject of its own, as the cloud worker stored each answer
under `koprogo.events.chat.completed.<copro>.cloud.<request id>` until 2026-12-04 (now one subject
per copro, `subjects.cloud_chat_completed`) and the gateway stores each task under
`task_submitted_key`; **few**, the same messages over 10
subjects (the baseline). Prints the server's anonymous resident memory (`RssAnon`, what the Go
heap holds) after each sixth of the messages and after 5 s idle: what a retained subject costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import StorageType, StreamConfig

from koprogo_cli.embedded import wait_for_port
from koprogo_cli.embedded_nats import nats_server_binary
from koprogo_cli.ports import free_port


def rss_anon_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no RssAnon for {pid}")


def subject(mode: str, i: int) -> str:
    if mode == "unique":
        return f"ev.chat.completed.copro-a.cloud.{i:08x}-4a1b-4c2d-8e3f-5a6b7c8d9e0f"
    return f"ev.chat.completed.copro-{i % 10}"


def start_server(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    folder.mkdir()
    port = free_port()
    (folder / "nats.conf").write_text(
        f'port: {port}\njetstream {{ store_dir: "{folder / "js"}", sync_interval: always }}\n'
    )
    log = folder / "nats.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [nats_server_binary(), "-c", str(folder / "nats.conf")], stdout=out, stderr=subprocess.STDOUT
        )
    wait_for_port(port, server, [log], timeout=10)
    return server, port


async def feed(mode: str, messages: int, size: int, port: int, pid: int) -> list[tuple[int, float]]:
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="EV", subjects=["ev.>"], storage=StorageType.FILE, max_age=30 * 86400, max_bytes=2 * 1024**3
        )
    )
    body = os.urandom(size // 2).hex().encode()
    marks = [(0, rss_anon_mib(pid))]
    step = max(1, messages // 6)
    for i in range(messages):
        await js.publish(subject(mode, i), body, headers={"Nats-Msg-Id": f"{mode}-{i}"})
        if (i + 1) % step == 0:
            marks.append((i + 1, rss_anon_mib(pid)))
    await asyncio.sleep(5)
    marks.append((-1, rss_anon_mib(pid)))
    await nc.close()
    return marks


def measure(mode: str, messages: int, size: int, work: Path) -> list[tuple[int, float]]:
    server, port = start_server(work / mode)
    try:
        return asyncio.run(feed(mode, messages, size, port, server.pid))
    finally:
        server.terminate()
        server.wait(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=120_000)
    parser.add_argument("--size", type=int, default=1200, help="bytes per message body")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="koprogo-bench-subjects-"))
    started = time.time()
    # One after the other, so that neither server's disk writes slow the other's.
    unique = measure("unique", args.messages, args.size, work)
    few = measure("few", args.messages, args.size, work)
    print(f"\n{args.messages} messages of {args.size} bytes each, {time.time() - started:.0f} s\n")
    print("| messages stored | few subjects: RssAnon (MiB) | a subject each: RssAnon (MiB) | difference |")
    print("|---|---|---|---|")
    for (count, few_mib), (_, unique_mib) in zip(few, unique, strict=True):
        label = "after 5 s idle" if count < 0 else f"{count:,}"
        print(f"| {label} | {few_mib:.1f} | {unique_mib:.1f} | {unique_mib - few_mib:+.1f} |")
    grown_few = few[-1][1] - few[0][1]
    grown_unique = unique[-1][1] - unique[0][1]
    per_subject = (grown_unique - grown_few) * 1024 * 1024 / args.messages
    print(
        f"\nGrowth: few {grown_few:+.1f} MiB, unique {grown_unique:+.1f} MiB: ~{per_subject:.0f} bytes per retained subject"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
