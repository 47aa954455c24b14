"""`koprogo-router`: run the router as its own process."""

from __future__ import annotations

import asyncio
import signal

from koprogo_shared.logging_setup import configure_logging

from koprogo_router.bootstrap import run_router
from koprogo_router.settings import RouterSettings


async def _serve(settings: RouterSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_router(settings, stop)


def main() -> None:
    settings = RouterSettings()
    configure_logging(settings.log_level, "router")
    asyncio.run(_serve(settings))
