"""The composition root: every adapter of the ledger is built here, once, at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_ledger.adapters.catalogue_seed import upsert_catalogue
from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_ledger.adapters.postgres_contents import PostgresContentStore
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.adapters.postgres_projection import PostgresProjectionUnitOfWork
from koprogo_ledger.adapters.postgres_token_ledger import PostgresLedgerHeads
from koprogo_ledger.adapters.postgres_undelivered import PostgresUndeliveredAnswers
from koprogo_ledger.adapters.request_owners import recover_request_owners
from koprogo_ledger.adapters.stream_scrubber import NatsStreamScrubber
from koprogo_ledger.domain.rewards import RewardRules
from koprogo_ledger.entrypoints.content_maintenance import run_content_maintenance
from koprogo_ledger.entrypoints.delivery_sweep import run_delivery_sweep
from koprogo_ledger.entrypoints.head_signing import run_head_signing
from koprogo_ledger.entrypoints.metrics import count_committed
from koprogo_ledger.entrypoints.nats_consumer import event_batch_handler, ledger_consumer_spec
from koprogo_ledger.entrypoints.stream_watch import watch_consumer_lag, watch_streams
from koprogo_ledger.service_layer.ports import ContentStore, ProjectionUnitOfWork
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared.catalogue import CATALOGUE
from koprogo_shared.consumer import ConsumerSpec, run_pull_consumer
from koprogo_shared.content_crypto import Keyring
from koprogo_shared.events import utc_now
from koprogo_shared.grid_signing import Signer, load_or_create_signer
from koprogo_shared.nats_connection import STREAMS_WAIT_S, connect_nats, streams_for_service
from koprogo_shared.node_roster import Roster, RosterFile
from koprogo_shared.ops_http import ops_server

log = logging.getLogger(__name__)

# How long a stopping ledger waits for its last head to be signed.
HEAD_SIGNING_STOP_S = 5.0


@dataclass
class Ledger:
    """A started ledger: schema migrated, catalogue seeded, streams declared, contents keyring loaded."""

    pool: asyncpg.Pool
    nc: NATS
    js: JetStreamContext
    spec: ConsumerSpec
    keyring: Keyring
    # Nodes publish with NATS keys: an edge completion must come on its node's own subject.
    nodes_keyed: bool = False
    # What each node's key was minted for: its outcomes only for copros and models it serves.
    roster: Callable[[], Roster | None] = lambda: None
    # The token ledger: its rewards, and the key its heads are signed with (registered at start).
    rules: RewardRules = field(default_factory=RewardRules)
    signer: Signer | None = None
    # How long an event waits for its predecessor from another site (LEDGER_ORIGIN_WAIT_S).
    origin_wait_s: float = 0.0

    def unit_of_work(self) -> ProjectionUnitOfWork:
        return PostgresProjectionUnitOfWork(self.pool, self.keyring, count_committed)

    async def caught_up(self) -> bool:
        """Whether every event stored so far was delivered to the ledger's consumer."""
        info = await self.js.consumer_info(self.spec.stream, self.spec.durable)
        return info.num_pending == 0

    def contents(self) -> ContentStore:
        return PostgresContentStore(self.pool, self.keyring)

    async def consume(self, stop: asyncio.Event) -> None:
        """Project events, a transaction per fetched batch, until `stop` is set; the batch in hand is finished."""
        # With NATS keys, an edge completion must come on its node's own subject (issue 11, finding 5).
        handler = event_batch_handler(
            self.unit_of_work,
            stop,
            NatsStreamScrubber(self.js, self.pool, ledger_durable=self.spec.durable),
            nodes_keyed=self.nodes_keyed,
            roster=self.roster,
            rules=self.rules,
            origin_wait_s=self.origin_wait_s,
        )
        await run_pull_consumer(self.js, self.spec, stop=stop, batch_handler=handler)

    def heads(self) -> PostgresLedgerHeads:
        return PostgresLedgerHeads(self.pool)

    async def recover_owners(self) -> None:
        """Give rows stored before text user ids their owner, from the audit log; a failure is
        logged and the next start tries again (the projection goes on meanwhile)."""
        try:
            await recover_request_owners(self.js, self.pool)
        except Exception as exc:
            log.warning("request owners not recovered from the audit log, tried at next start: %r", exc)

    async def readiness(self) -> dict[str, bool]:
        return {"nats": self.nc.is_connected, "postgres": await self._postgres_answers()}

    async def _postgres_answers(self) -> bool:
        try:
            async with asyncio.timeout(2):
                return bool(await self.pool.fetchval("SELECT true"))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False

    async def aclose(self) -> None:
        try:
            if not self.nc.is_closed:
                await self.nc.drain()
        finally:
            await self.pool.close()


def head_signer(settings: LedgerSettings) -> Signer:
    """The key the token ledger's heads are signed with (`LedgerSettings.signing_seed_file`)."""
    path, may_mint = settings.signing_seed_file()
    return load_or_create_signer(path) if may_mint else Signer.from_seed_file(path)


async def bootstrap(settings: LedgerSettings) -> Ledger:
    """Load the content keyring and the heads' signing key, connect to PostgreSQL and NATS, migrate,
    seed the models, record the signing key, declare the streams.

    Raises `ContentKeyError` before connecting to anything when no usable content key is configured,
    `SignatureError` when the signing seed cannot be read, `LedgerKeyError` when the ledger's heads
    were signed with another key.
    """
    keyring = settings.content_keyring()
    rules = settings.reward_rules()
    signer = head_signer(settings)
    pool = await create_pool(settings.database_url, settings.db_pool_max)
    try:
        async with pool.acquire() as conn:
            applied = await apply_migrations(conn)
            await upsert_catalogue(conn, CATALOGUE)
        if applied:
            log.info("schema migrated to version %d", applied[-1])
        await PostgresLedgerHeads(pool).register_key(signer.public_key, utc_now())
        log.info("token ledger heads are signed with %s", signer.public_key)
        nc, js = await connect_nats(
            settings.nats_url,
            "koprogo-ledger",
            nkey_seed_file=settings.nats_nkey_seed_file,
            inbox_root=settings.nats_inbox_root,
        )
    except BaseException:
        await pool.close()
        raise
    try:
        await streams_for_service(js, settings.nats_nkey_seed_file, timeout_s=STREAMS_WAIT_S)
    except BaseException:
        await nc.close()
        await pool.close()
        raise
    return Ledger(
        pool=pool,
        nc=nc,
        js=js,
        spec=ledger_consumer_spec(settings),
        keyring=keyring,
        nodes_keyed=settings.nats_nkey_seed_file is not None,
        roster=RosterFile(settings.node_roster_file) if settings.node_roster_file else lambda: None,
        rules=rules,
        signer=signer,
        origin_wait_s=settings.ledger_origin_wait_s,
    )


async def run_ledger(
    settings: LedgerSettings, stop: asyncio.Event, started: asyncio.Event | None = None
) -> None:
    """Run the ledger in this event loop until `stop` is set, then close cleanly.

    `started` is set once the schema is migrated and the consumer is about to run. The
    ops server (/health, /ready, /metrics) runs when `settings.ops_port` is not 0. Beside
    the projection, rows left in plaintext are sealed and contents past retention purged,
    at start and then every `settings.retention_interval_s`; rows stored before text user
    ids get their owner back from the audit log, once, at start.
    """
    ledger = await bootstrap(settings)
    ops = None
    ops_task: asyncio.Task[None] | None = None
    maintenance = asyncio.create_task(
        run_content_maintenance(ledger.contents(), settings, stop), name="ledger-contents"
    )
    owners = asyncio.create_task(ledger.recover_owners(), name="ledger-request-owners")
    streams = asyncio.create_task(watch_streams(ledger.js, stop), name="ledger-stream-fill")
    lag = asyncio.create_task(watch_consumer_lag(ledger.js, ledger.spec, stop), name="ledger-lag")
    sweep = asyncio.create_task(
        run_delivery_sweep(PostgresUndeliveredAnswers(ledger.pool), ledger.caught_up, settings, stop),
        name="ledger-undelivered",
    )
    assert ledger.signer is not None  # bootstrap sets it
    heads = asyncio.create_task(
        run_head_signing(ledger.heads(), ledger.signer, settings.ledger_head_interval_s, stop),
        name="ledger-heads",
    )
    try:
        if settings.ops_port:
            ops = ops_server(settings.ops_host, settings.ops_port, ledger.readiness)
            ops_task = asyncio.create_task(ops.serve(), name="ledger-ops")
        if started is not None:
            started.set()
        log.info("projecting %s into PostgreSQL", ledger.spec.filter_subject)
        await ledger.consume(stop)
        if not stop.is_set():
            # The consumer only returns early when NATS closed for good: exit non-zero so a supervisor restarts us.
            raise RuntimeError("the NATS connection closed; the ledger cannot consume")
    finally:
        maintenance.cancel()  # a batch in flight is rolled back; the next round takes it again
        owners.cancel()  # an update not committed is done again at the next start
        sweep.cancel()  # a sweep not committed is done again at the next round
        streams.cancel()
        lag.cancel()
        for task in (maintenance, owners, sweep, streams, lag):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if stop.is_set():
            # Its last round signs what this ledger appended since the previous head.
            try:
                await asyncio.wait_for(heads, HEAD_SIGNING_STOP_S)
            except TimeoutError:
                log.warning("the token ledger's last head was not signed within %g s", HEAD_SIGNING_STOP_S)
        else:
            heads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heads
        if ops is not None and ops_task is not None:
            ops.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await ops_task
        await ledger.aclose()
        log.info("stopped")
