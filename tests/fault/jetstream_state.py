"""What JetStream holds for the stack's consumers: settled, busy, or with a backlog.

`settled` waits until nothing is left to deliver or to be acknowledged on the event and work
streams (the ledger caught up, no work item waits for a redelivery); `when_held` until a
consumer's worker holds a message (the moment to kill it); `backlog` counts what waits for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats
from nats.js import JetStreamContext

from koprogo_shared import subjects
from koprogo_shared.nats_connection import nats_servers


async def settled(nats_url: str, timeout: float = 45.0, quiet_s: float = 1.5) -> None:
    """Until JetStream has nothing to deliver or be acknowledged on any consumer of the event and
    work streams, and nothing new was stored for `quiet_s`: the ledger caught up, no work item
    waits for a redelivery, no late answer is on its way."""
    nc = await nats.connect(servers=nats_servers(nats_url))
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        last: tuple[int, ...] = ()
        while True:
            try:
                busy, marks = await _busy_consumers(js)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                # Right after a cluster node's restart (test_kill_under_load's cluster case), the
                # JetStream API may leave a request unanswered while the node catches up (seen in
                # a full run: STREAM.INFO timed out): not settled yet, asked again until `timeout`.
                busy, marks = [f"the JetStream API did not answer ({type(exc).__name__})"], last
            now = time.monotonic()
            if busy or marks != last:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= quiet_s:
                return
            last = marks
            if now > deadline:
                raise AssertionError(
                    f"JetStream not settled after {timeout:g}s: {busy or 'streams still growing'}"
                )
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def _busy_consumers(js: JetStreamContext) -> tuple[list[str], tuple[int, ...]]:
    busy: list[str] = []
    marks: list[int] = []
    for stream in (subjects.EVENTS_STREAM, subjects.WORK_STREAM):
        marks.append((await js.stream_info(stream)).state.last_seq)
        for info in await js.consumers_info(stream):
            if info.num_pending or info.num_ack_pending:
                busy.append(
                    f"{stream}/{info.name}: {info.num_pending} pending, {info.num_ack_pending} unacknowledged"
                )
    return busy, tuple(marks)


async def when_held(nats_url: str, stream: str, durable: str, timeout: float = 10.0) -> bool:
    """Until `durable` holds a message it has not acknowledged (its worker is busy with it);
    False if that did not happen within `timeout`."""
    nc = await nats.connect(servers=nats_servers(nats_url))
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(nats.errors.Error):
                if (await js.consumer_info(stream, durable)).num_ack_pending:
                    return True
            await asyncio.sleep(0.005)
        return False
    finally:
        await nc.close()


async def backlog(nats_url: str, stream: str, durable: str) -> int:
    """The messages `durable` has not had acknowledged yet: not delivered, or delivered and held."""
    nc = await nats.connect(servers=nats_servers(nats_url))
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    finally:
        await nc.close()
