"""Use case: sign the token ledger's head (its last entry's seq and hash) when it moved.

A signed head is the ledger's promise that the chain up to `seq` ends in `hash`: whoever later
rewrites history and recomputes every hash after it still fails at the first signed head past
the rewrite (`koprogo_shared.token_chain.verify_chain`).
"""

from __future__ import annotations

from datetime import datetime

from koprogo_ledger.service_layer.ports import LedgerHeads
from koprogo_shared.grid_signing import Signer
from koprogo_shared.token_chain import head_payload


async def sign_head(heads: LedgerHeads, signer: Signer, now: datetime) -> int | None:
    """Sign the tip when no head covers it yet; its seq, or None when there was nothing to sign."""
    tip = await heads.tip()
    if tip.seq == 0 or tip.seq <= await heads.last_signed_seq():
        return None
    signature = signer.sign(head_payload(tip.seq, tip.hash))
    inserted = await heads.insert_head(tip.seq, tip.hash, now, signer.public_key, signature)
    return tip.seq if inserted else None
