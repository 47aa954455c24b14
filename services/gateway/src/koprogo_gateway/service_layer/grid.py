"""Use case: the grid's token ledger, read (`/mcp/v1/grid/...`; docs/grid-trust.md, "API").

Who sees what: a node's standing, balance and entries are its operator's (token claim `nodes`)
and the admins'; the solidarity fund, the ledger's verification and its export are any member's
(`mcp:read`): the ledger is public to members so that anyone can check it — node ids, copro ids,
task ids and amounts, never a user id nor any content.

`verify` and `export` read the whole chain: `token_chain.verify_chain` and
`token_chain.export_lines` (the one way to do each, shared with `koprogo ledger verify`) run in
a worker thread over the adapter's streamed snapshot. At most `max_chain_readers` run at once per
gateway (each holds a database connection while it reads); a caller beyond them waits up to
`chain_wait_s`, then gets a 503 `ledger_busy`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from koprogo_gateway.adapters.grid_ledger import GridLedger
from koprogo_gateway.domain.access import READ, Caller, grid_nodes_of, require_grid_node, require_scope
from koprogo_gateway.domain.errors import GridLedgerBusyError, GridNodeNotFoundError
from koprogo_gateway.domain.grid_view import (
    EntryPage,
    GridNodeOut,
    GridNodesOut,
    LedgerVerifyOut,
    NodeBalanceOut,
    SolidarityFundOut,
)
from koprogo_shared.token_chain import export_lines, verify_chain

log = logging.getLogger(__name__)

# Lines handed from the export's worker thread to the response at a time.
EXPORT_CHUNK_LINES = 500


@dataclass
class GridLedgerService:
    ledger: GridLedger
    max_chain_readers: int = 2
    chain_wait_s: float = 10.0
    _readers: asyncio.Semaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._readers = asyncio.Semaphore(self.max_chain_readers)

    async def nodes(self, caller: Caller) -> GridNodesOut:
        """Every node for an admin; the token's own nodes for an operator; 403 for anyone else."""
        require_scope(caller, READ)
        visible = grid_nodes_of(caller)
        found = await self.ledger.nodes(None if visible is None else sorted(visible))
        return GridNodesOut(nodes=[GridNodeOut.of(node) for node in found])

    async def node_balance(self, caller: Caller, node_id: str, page: EntryPage) -> NodeBalanceOut:
        """A node's balance, escrow and entries (newest first, paged); 404 for a node the caller may not see."""
        require_scope(caller, READ)
        require_grid_node(caller, node_id)
        accounts = await self.ledger.node_accounts(node_id, page)
        if accounts is None:
            raise GridNodeNotFoundError(f"no grid node {node_id!r} in the token ledger")
        return NodeBalanceOut.of(accounts, page)

    async def solidarity_fund(self, caller: Caller) -> SolidarityFundOut:
        require_scope(caller, READ)
        return SolidarityFundOut.of(await self.ledger.solidarity_fund())

    async def verify(self, caller: Caller) -> LedgerVerifyOut:
        """The chain recomputed and every signed head checked with the ledger's key; `ok` false
        names the first entry (or head) that breaks."""
        require_scope(caller, READ)
        async with self._reader(), self.ledger.chain() as chain:
            report = await asyncio.to_thread(verify_chain, chain.entries, chain.heads, chain.public_key)
        if not report.ok:
            log.warning("token ledger verification failed at %s: %s", report.broken_at, report.reason)
        return LedgerVerifyOut(**report.as_json(), ledger_public_key=chain.public_key)

    async def export(self, caller: Caller) -> AsyncIterator[bytes]:
        """The ledger's export (JSON lines), as chunks of bytes to stream.

        The database and a free reader are checked before the answer starts (a 503 then, not a
        200 cut short); the snapshot itself is taken when the stream is first read.
        """
        require_scope(caller, READ)
        await self.ledger.public_key()
        if self._readers.locked():
            raise self._busy()
        return self._export_chunks()

    async def _export_chunks(self) -> AsyncIterator[bytes]:
        async with self._reader(), self.ledger.chain() as chain:
            lines = export_lines(chain.entries, chain.heads, chain.public_key)
            while chunk := await asyncio.to_thread(_next_lines, lines, EXPORT_CHUNK_LINES):
                yield ("\n".join(chunk) + "\n").encode()

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._readers.acquire(), timeout=self.chain_wait_s)
        except TimeoutError:
            raise self._busy() from None
        try:
            yield
        finally:
            self._readers.release()

    def _busy(self) -> GridLedgerBusyError:
        return GridLedgerBusyError(
            f"{self.max_chain_readers} verifications or exports of the token ledger are running on this "
            "gateway: retry in a moment"
        )


def _next_lines(lines: Iterator[str], count: int) -> list[str]:
    return list(itertools.islice(lines, count))
