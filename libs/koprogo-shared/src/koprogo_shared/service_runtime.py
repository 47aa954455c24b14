"""How every service process runs: until SIGINT/SIGTERM, then a clean stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable


def run_until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `run(stop)` in a new event loop; SIGINT/SIGTERM set `stop` instead of killing.

    Setting `stop` (not cancelling) lets a consumer finish and ack what it holds.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    # uvloop where it exists (Linux, macOS): the message hops are loop-bound.
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


async def until_stopped_or_failed(stop: asyncio.Event, workers: Iterable[asyncio.Task[None]]) -> None:
    """Wait for `stop`; if a worker ends first, re-raise its error (or fail) so the process exits.

    A service whose consumer died must not keep answering /ready with 200.
    """
    workers = list(workers)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *workers], return_when=asyncio.FIRST_COMPLETED)
    if stopper in done:
        return
    stopper.cancel()
    for task in done:
        task.result()  # re-raises the worker's error
    raise RuntimeError(f"a worker stopped unexpectedly: {[t.get_name() for t in done]}")
