"""`koprogo-ledger`: migrate, then project every event into PostgreSQL until SIGTERM/SIGINT."""

from __future__ import annotations

from koprogo_ledger.bootstrap import run_ledger
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared.logging_setup import configure_logging
from koprogo_shared.service_runtime import run_until_signalled


def main() -> None:
    """Console script `koprogo-ledger`."""
    settings = LedgerSettings()  # type: ignore[call-arg]  # DATABASE_URL comes from the environment
    configure_logging(settings.log_level, "ledger")
    run_until_signalled(lambda stop: run_ledger(settings, stop))


if __name__ == "__main__":
    main()
