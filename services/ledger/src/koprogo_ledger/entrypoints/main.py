"""`koprogo-ledger`: migrate, then project every event into PostgreSQL until SIGTERM/SIGINT.

Two maintenance commands for the contents' keys:

    koprogo-ledger add-key [--keys-file PATH]   append a fresh key to the keys file; it becomes the
                                                current key of every service started afterwards
    koprogo-ledger rotate-keys [--batch N]      re-encrypt the rows sealed under older keys with the
                                                current one (run after restarting the services)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from koprogo_ledger.adapters.postgres_contents import PostgresContentStore
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.bootstrap import run_ledger
from koprogo_ledger.domain.errors import LedgerKeyError
from koprogo_ledger.service_layer.contents import reseal_contents
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared.content_crypto import ContentCryptoError, add_key_to_file
from koprogo_shared.grid_signing import SignatureError
from koprogo_shared.logging_setup import configure_logging
from koprogo_shared.service_runtime import run_until_signalled
from koprogo_shared.settings import ContentKeySettings
from koprogo_shared.telemetry import configure_tracing


def main(argv: Sequence[str] | None = None) -> None:
    """Console script `koprogo-ledger`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "add-key":
            _add_key(args.keys_file)
        elif args.command == "rotate-keys":
            _rotate_keys(args.batch)
        else:
            _run()
    except (ContentCryptoError, LedgerKeyError, SignatureError) as exc:
        # Start-up and key errors say what to set; no traceback hides the message.
        raise SystemExit(f"koprogo-ledger: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koprogo-ledger",
        description="Project every KoproGo event into PostgreSQL (no command), or manage the content keys.",
    )
    commands = parser.add_subparsers(dest="command")
    add_key = commands.add_parser("add-key", help="append a fresh content key (the new current one)")
    add_key.add_argument("--keys-file", type=Path, help="the keys file (default: CONTENT_KEYS_FILE)")
    rotate = commands.add_parser("rotate-keys", help="re-encrypt rows sealed under older keys")
    rotate.add_argument(
        "--batch", type=int, default=None, help="rows per transaction (default: CONTENTS_BATCH)"
    )
    return parser


def _run() -> None:
    settings = LedgerSettings()  # type: ignore[call-arg]  # DATABASE_URL comes from the environment
    configure_logging(settings.log_level, "ledger")
    # A span per event, ended a batch at a time: room for the batch, the one fetched ahead and
    # as many again while the exporter sends (the SDK's default, 2,048, dropped some of a batch).
    configure_tracing("koprogo-ledger", span_queue=4 * settings.ledger_batch)
    settings.content_keyring()  # refuse to start, with the reason, before anything else
    run_until_signalled(lambda stop: run_ledger(settings, stop))


def _add_key(keys_file: Path | None) -> None:
    path = keys_file or ContentKeySettings().content_keys_file
    if path is None:
        raise SystemExit("koprogo-ledger add-key: give --keys-file or set CONTENT_KEYS_FILE")
    key_id = add_key_to_file(path)
    print(f"added content key {key_id} to {path}: the current key of every service started from now on")
    print(
        "restart the ledger (and the gateway), then run `koprogo-ledger rotate-keys` to re-encrypt older rows"
    )


def _rotate_keys(batch: int | None) -> None:
    settings = LedgerSettings()  # type: ignore[call-arg]
    keyring = settings.content_keyring()

    async def rotate() -> None:
        pool = await create_pool(settings.database_url, max_size=2)
        try:
            store = PostgresContentStore(pool, keyring)
            resealed = await reseal_contents(store, batch=batch or settings.contents_batch)
            remaining = await store.count_by_key()
        finally:
            await pool.close()
        print(f"re-encrypted under {keyring.current_key_id}: {resealed}")
        for table, by_key in remaining.items():
            print(f"{table}: rows with contents by key id: {by_key}")

    asyncio.run(rotate())


if __name__ == "__main__":
    main(sys.argv[1:])
