"""What one ledger fetch may hold: `LEDGER_BATCH` events and `LEDGER_BATCH_BYTES` bytes, with a
durable that lets two batches wait for their acks (the one projected, the one fetched ahead)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from koprogo_ledger.entrypoints.nats_consumer import ledger_consumer_spec
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared.durables import consumer_config
from koprogo_shared.publishing import MAX_PAYLOAD_BYTES
from tests.conftest import TEST_CONTENT_KEYS, settings_fields

KEYS = settings_fields(TEST_CONTENT_KEYS)


def test_the_ledgers_durable_lets_two_batches_wait_and_a_fetch_is_capped_in_bytes() -> None:
    settings = LedgerSettings(database_url="postgresql://x/y", ledger_batch=2048, **KEYS)
    spec = ledger_consumer_spec(settings)
    assert (spec.batch, spec.max_bytes) == (2048, settings.ledger_batch_bytes)
    assert consumer_config(spec).max_ack_pending == 4096
    small = ledger_consumer_spec(LedgerSettings(database_url="postgresql://x/y", ledger_batch=16, **KEYS))
    assert consumer_config(small).max_ack_pending == 1000  # the default, when it is more


def test_a_byte_cap_a_single_message_could_pass_is_refused() -> None:
    with pytest.raises(ValidationError, match="ledger_batch_bytes"):
        LedgerSettings(database_url="postgresql://x/y", ledger_batch_bytes=MAX_PAYLOAD_BYTES, **KEYS)
    assert LedgerSettings(database_url="postgresql://x/y", **KEYS).ledger_batch_bytes > MAX_PAYLOAD_BYTES
