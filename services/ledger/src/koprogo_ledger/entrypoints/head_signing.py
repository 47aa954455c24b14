"""The ledger's head signer (`service_layer.ledger_heads`): every `ledger_head_interval_s`, and once
more when the ledger stops, the tip is signed if it moved. A failed round is logged and tried
again at the next one (the chain stays verifiable; only the latest entries wait for a head).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from koprogo_ledger.service_layer.ledger_heads import sign_head
from koprogo_ledger.service_layer.ports import LedgerHeads
from koprogo_shared.events import utc_now
from koprogo_shared.grid_signing import Signer

log = logging.getLogger(__name__)


async def run_head_signing(
    heads: LedgerHeads, signer: Signer, interval_s: float, stop: asyncio.Event
) -> None:
    """Sign heads until `stop` is set, then sign the last one."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        await _sign(heads, signer)


async def _sign(heads: LedgerHeads, signer: Signer) -> None:
    try:
        seq = await sign_head(heads, signer, utc_now())
    except Exception as exc:
        log.warning("the token ledger's head was not signed, tried again later: %r", exc)
        return
    if seq is not None:
        log.info("token ledger head %d signed", seq)
