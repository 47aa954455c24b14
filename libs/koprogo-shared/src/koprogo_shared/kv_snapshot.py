"""Every value of a JetStream key-value bucket, read once, without trusting nats-py's end marker alone.

nats-py's watcher puts its "caught up" marker (`None`) when the consumer's info says nothing is
pending and the client has counted no delivered message yet. Under load the server may have
handed every message to the connection while the client has not read them: the marker then comes
first and the values after it. A reader that stops at the marker sees an empty bucket (seen: the
grid scheduler, restarted under the whole test suite's load, loaded 0 of its 4 tasks and could not
re-check a node's unchecked results; tests/e2e/test_grid_trust.py). So `kv_values` reads until the
entry after which the server had nothing more (`Entry.delta == 0`), and believes a marker that
comes before any entry only when the bucket's stream holds no message.
"""

from __future__ import annotations

import logging

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)


async def kv_values(kv: KeyValue, *, timeout_s: float = 10.0) -> dict[str, bytes]:
    """Each key's value (deleted and purged keys left out, as are empty values), as stored when
    the call began. A watch that stays silent `timeout_s` ends the read with a warning."""
    values: dict[str, bytes] = {}
    watcher = await kv.watchall()  # deletes included: the last message may be one
    try:
        seen_entry = False
        while True:
            try:
                entry = await watcher.updates(timeout=timeout_s)
            except TimeoutError:
                bucket = (await kv.status()).bucket
                log.warning(
                    "bucket %s: nothing more within %.0f s; %d values read", bucket, timeout_s, len(values)
                )
                break
            if entry is None:
                if seen_entry or (await kv.status()).values == 0:
                    break
                continue  # the marker came before the values: they follow
            seen_entry = True
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                values.pop(entry.key, None)
            else:
                values[entry.key] = entry.value
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()
    return values
