"""A JetStream key-value bucket's values as stored, read with a watch, without trusting nats-py's end marker alone.

nats-py's watcher puts its "caught up" marker (`None`) when the consumer's info says nothing is
pending and the client has counted no delivered message yet. Under load the server may have
handed every message to the connection while the client has not read them: the marker then comes
first and the values after it. A reader that stops at the marker sees an empty bucket (seen: the
grid scheduler, restarted under the whole test suite's load, loaded 0 of its 4 tasks and could not
re-check a node's unchecked results; tests/e2e/test_grid_trust.py). So `initial_entries` reads
until the entry after which the server had nothing more (`Entry.delta == 0`), and believes a
marker that comes before any entry only when the bucket's stream holds no message.
"""

from __future__ import annotations

import logging

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)


async def initial_entries(
    kv: KeyValue, watcher: KeyValue.KeyWatcher, *, timeout_s: float
) -> tuple[list[KeyValue.Entry], bool]:
    """The entries `watcher` (a fresh `kv.watchall()`) delivers for what was stored when it began,
    deletes included, and whether they are all there (False: the watch stayed silent `timeout_s`
    before the last). The watcher is left running, for what changes next."""
    entries: list[KeyValue.Entry] = []
    while True:
        try:
            entry = await watcher.updates(timeout=timeout_s)
        except TimeoutError:
            return entries, False
        if entry is None:
            if entries or (await kv.status()).values == 0:
                return entries, True
            continue  # the marker came before the values: they follow
        entries.append(entry)
        if entry.delta == 0:
            return entries, True


async def kv_values(kv: KeyValue, *, timeout_s: float = 10.0) -> dict[str, bytes]:
    """Each key's value as stored when the call began (deleted and purged keys, and empty values,
    left out). A watch that stays silent `timeout_s` ends the read with a warning."""
    watcher = await kv.watchall()  # deletes included: the last message may be one
    try:
        entries, complete = await initial_entries(kv, watcher, timeout_s=timeout_s)
    finally:
        await watcher.stop()
    if not complete:
        bucket = (await kv.status()).bucket
        log.warning("bucket %s: nothing more within %.0f s; %d entries read", bucket, timeout_s, len(entries))
    values: dict[str, bytes] = {}
    for entry in entries:
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            values.pop(entry.key, None)
        else:
            values[entry.key] = entry.value
    return values
