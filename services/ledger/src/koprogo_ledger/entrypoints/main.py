"""`koprogo-ledger`: migrate, then project every event into PostgreSQL until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

from koprogo_ledger.bootstrap import run_ledger
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared.logging_setup import configure_logging


async def _serve(settings: LedgerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Setting `stop` (not cancelling) lets the consumer finish and ack what it holds.
        loop.add_signal_handler(sig, stop.set)
    await run_ledger(settings, stop)


def main() -> None:
    """Console script `koprogo-ledger`."""
    settings = LedgerSettings()  # type: ignore[call-arg]  # DATABASE_URL comes from the environment
    configure_logging(settings.log_level, "ledger")
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
