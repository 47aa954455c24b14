"""Composition root: the gateway's adapters are built here, once, at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import httpx
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_gateway.adapters.chat_bus import NatsChatBus
from koprogo_gateway.adapters.document_store import NatsDocumentStore
from koprogo_gateway.adapters.grid_ledger import PostgresGridLedger
from koprogo_gateway.adapters.idempotency_store import NatsKvIdempotencyStore
from koprogo_gateway.adapters.jwks_client import LastGoodJwksClient
from koprogo_gateway.adapters.jwt_verifier import JwtVerifier
from koprogo_gateway.adapters.leaf_monitor import NatsLeafzMonitor
from koprogo_gateway.adapters.rate_limit_store import NatsKvCounterStore
from koprogo_gateway.adapters.routing_policy_store import (
    NatsKvRoutingPolicyStore,
)
from koprogo_gateway.adapters.s3_documents import S3DocumentSource
from koprogo_gateway.adapters.session_tokens import LocalSessionTokens
from koprogo_gateway.adapters.stats_repository import BuildingStatsRepository, PostgresStatsRepository
from koprogo_gateway.adapters.task_bus import NatsTaskBus
from koprogo_gateway.adapters.task_repository import PostgresTaskRepository
from koprogo_gateway.adapters.used_login_codes import NatsKvUsedLoginCodes
from koprogo_gateway.adapters.user_data_repository import (
    BuildingUserDataRepository,
    PostgresUserDataRepository,
)
from koprogo_gateway.domain.copro_context import copro_of_context
from koprogo_gateway.service_layer.admission import ChatAdmission
from koprogo_gateway.service_layer.chat import ChatService
from koprogo_gateway.service_layer.chat_routing import ChatRouting
from koprogo_gateway.service_layer.grid import GridLedgerService
from koprogo_gateway.service_layer.idempotency_keys import IdempotencyKeys
from koprogo_gateway.service_layer.login_links import LoginLinks
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_gateway.service_layer.routing_policies import CoproRoutingPolicies
from koprogo_gateway.service_layer.site_link import SiteLink
from koprogo_gateway.service_layer.tasks import TaskService
from koprogo_gateway.settings import GatewaySettings
from koprogo_shared import subjects
from koprogo_shared.grid_stores import grid_stores_for_service
from koprogo_shared.heartbeats import follow_heartbeats
from koprogo_shared.kv_buckets import IDEMPOTENCY_BUCKET
from koprogo_shared.nats_connection import STREAMS_WAIT_S, buckets_for_service, connect_nats
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.node_roster import RosterFile
from koprogo_shared.routing.policy_book import WatchedPolicyBook
from koprogo_shared.subjects import RATE_LIMIT_BUCKET, ROUTING_POLICY_BUCKET

log = logging.getLogger(__name__)

LEAF_MONITOR_TIMEOUT_S = 1.0
# How long the gateway tries to start watching the routing policies before it leaves every chat to
# the routers (`_chat_routing`).
ROUTING_WATCH_START_S = 10.0


@dataclass
class Gateway:
    settings: GatewaySettings
    nc: NATS
    js: JetStreamContext
    pool: asyncpg.Pool
    registry: NodeRegistry
    chat: ChatService
    stats: PostgresStatsRepository
    user_data: PostgresUserDataRepository
    routing_policies: CoproRoutingPolicies
    # None when authentication is off (AUTH_DISABLED=true and no verifier).
    verifier: JwtVerifier | None
    tasks: TaskService
    grid: GridLedgerService
    # The site (hub or building) and its link to the hub, polled in the background on a building.
    site_link: SiteLink
    # None unless tokens are checked with the local HS256 secret (settings.login_links_on).
    login_links: LoginLinks | None = None
    # The copros' policies, watched to route chats here (None: the router routes them all).
    policy_book: WatchedPolicyBook | None = None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.site_link.close()
        if self.policy_book is not None:
            with contextlib.suppress(Exception):
                await self.policy_book.close()
        with contextlib.suppress(Exception):
            # The delivery records of answers already sent, before the connection goes.
            await asyncio.wait_for(self.chat.settle(), timeout=5)
        with contextlib.suppress(Exception):
            await self.nc.drain()
        with contextlib.suppress(Exception):
            await self.pool.close()


async def _chat_routing(
    settings: GatewaySettings, js: JetStreamContext, registry: NodeRegistry
) -> tuple[ChatRouting | None, WatchedPolicyBook | None]:
    """Where chats are stored (`chat_routing.py`): routed here only with every copro's policy known
    (an `edge_only` copro must never be sent to the cloud by a default it does not know it has);
    a watch that cannot start within ROUTING_WATCH_START_S (a NATS identity of an earlier release:
    run `koprogo nats-config` again) leaves routing to the router, said once in the log."""
    if not settings.gateway_routes_cloud or settings.site == "building":
        return None, None
    book = WatchedPolicyBook()
    try:
        await asyncio.wait_for(book.follow(js), timeout=ROUTING_WATCH_START_S)
    except Exception as exc:
        log.warning("the router routes every chat: the routing policies cannot be watched (%r)", exc)
        with contextlib.suppress(Exception):
            await book.close()
        return None, None
    return ChatRouting(registry, book, edge_pools=settings.gateway_routes_edge_pools), book


async def bootstrap(settings: GatewaySettings) -> Gateway:
    verifier = build_verifier(settings)
    _say_how_tokens_are_checked(settings)
    # The GDPR export opens stored contents: with authentication on, a missing or malformed
    # keyring stops the start here (ContentKeyError says what to set). Off, the export is refused.
    keyring = settings.content_keyring() if verifier is not None else None
    # The gateway does not declare the KOPROGO_* streams (the ledger and the router do): its
    # NATS identity may not create or alter them.
    nc, js = await connect_nats(
        settings.nats_url,
        f"koprogo-gateway-{settings.gateway_id}",
        nkey_seed_file=settings.nats_nkey_seed_file,
        inbox_root=settings.nats_inbox_root,
    )
    try:
        # With a key the setup step declared both buckets (counters kept two windows); the
        # gateway may only read and write their keys.
        await buckets_for_service(
            js,
            settings.nats_nkey_seed_file,
            rate_limit_window_s=settings.rate_limit_window_s,
            timeout_s=STREAMS_WAIT_S,
        )
        # On the chat path, a store that does not answer within its own short timeout is unreachable.
        counters = await nc.jetstream(timeout=settings.rate_limit_store_timeout_s).key_value(
            RATE_LIMIT_BUCKET
        )
        policies = await nc.jetstream(timeout=settings.routing_policy_store_timeout_s).key_value(
            ROUTING_POLICY_BUCKET
        )
        # The grid's object store for task documents (declared by the setup step when keys are used).
        await grid_stores_for_service(js, settings.nats_nkey_seed_file, timeout_s=STREAMS_WAIT_S)
        documents = await NatsDocumentStore.open(js)
        # On the chat path too: the same short timeout as the counters.
        keys_js = nc.jetstream(timeout=settings.rate_limit_store_timeout_s)
        keys_bucket = await keys_js.key_value(IDEMPOTENCY_BUCKET)
        idempotency_keys = NatsKvIdempotencyStore(keys_bucket, keys_js)
        # The ledger owns the schema; the gateway only reads it.
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=settings.db_pool_max)
    except BaseException:
        await nc.close()
        raise
    bus = NatsChatBus(nc, js, subjects.gateway_reply(settings.gateway_id))
    await bus.start()
    registry = (
        NodeRegistry(RosterFile(settings.node_roster_file)) if settings.node_roster_file else NodeRegistry()
    )
    await follow_heartbeats(nc, registry)
    routing, policy_book = await _chat_routing(settings, js, registry)
    admission = _admission(settings, NatsKvCounterStore(counters))
    keys = IdempotencyKeys(idempotency_keys)  # one key space: chats and tasks
    site_link = _site_link(settings)
    site_link.start()
    return Gateway(
        settings=settings,
        nc=nc,
        js=js,
        pool=pool,
        registry=registry,
        chat=ChatService(
            bus=bus,
            admission=admission,
            registry=registry,
            keys=keys,
            timeout_s=settings.chat_timeout_s,
            building_copro=copro_of_context(f"copro:{settings.building_copro}")
            if settings.building_copro
            else None,
            routing=routing,
        ),
        stats=(BuildingStatsRepository if settings.site == "building" else PostgresStatsRepository)(pool),
        user_data=(BuildingUserDataRepository if settings.site == "building" else PostgresUserDataRepository)(
            pool, keyring
        ),
        routing_policies=CoproRoutingPolicies(NatsKvRoutingPolicyStore(policies)),
        verifier=verifier,
        tasks=TaskService(
            bus=NatsTaskBus(js),
            documents=documents,
            repository=PostgresTaskRepository(pool),
            admission=admission,
            max_document_bytes=settings.task_document_max_bytes,
            task_ttl_s=settings.task_ttl_s,
            source=_document_source(settings),
            max_parameters_bytes=settings.task_parameters_max_bytes,
            keys=keys,
            at_building=settings.site == "building",
        ),
        grid=GridLedgerService(PostgresGridLedger(pool)),
        site_link=site_link,
        login_links=_login_links(settings, admission, NatsKvUsedLoginCodes(keys_bucket)),
        policy_book=policy_book,
    )


def _login_links(
    settings: GatewaySettings, admission: ChatAdmission, used: NatsKvUsedLoginCodes
) -> LoginLinks | None:
    """The login links' exchange, when this gateway holds the HS256 secret that signs codes and sessions."""
    if not settings.login_links_on or settings.jwt_secret is None:
        return None
    tokens = LocalSessionTokens(
        secret=settings.jwt_secret.get_secret_value(),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_s=settings.jwt_leeway_s,
        session_ttl=timedelta(seconds=settings.login_session_ttl_s),
    )
    return LoginLinks(tokens=tokens, used=used, admission=admission)


def _site_link(settings: GatewaySettings) -> SiteLink:
    """The hub's link (always up), or a building's, read from its nats-server's `/leafz`."""
    if settings.site == "hub" or settings.nats_monitor_url is None:
        return SiteLink("hub")
    # One second at most per read: a monitoring endpoint that hangs leaves the link unknown.
    client = httpx.AsyncClient(timeout=LEAF_MONITOR_TIMEOUT_S)
    return SiteLink("building", NatsLeafzMonitor(client, settings.nats_monitor_url))


def _document_source(settings: GatewaySettings) -> S3DocumentSource | None:
    """The operator's S3-compatible store for `document_url`, when one is configured."""
    if not settings.s3_configured:
        return None
    secret = settings.s3_secret_access_key
    return S3DocumentSource(
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        region=settings.s3_region,
        allowed_buckets=settings.s3_buckets,
    )


def _say_how_tokens_are_checked(settings: GatewaySettings) -> None:
    if not settings.authentication_on:
        # Loud on purpose: this gateway serves every caller, token or not, as an admin.
        log.warning(
            "AUTHENTICATION IS DISABLED (AUTH_DISABLED=true, no verifier): every caller is served as an "
            "admin of every copro; set JWT_SECRET_FILE or JWKS_URL to check tokens"
        )
    elif settings.auth_disabled:
        log.warning("AUTH_DISABLED=true is ignored: a verifier is configured, tokens are checked")
    else:
        log.info("tokens checked with %s", "JWKS_URL" if settings.jwks_url else "the HS256 secret")


def build_verifier(settings: GatewaySettings) -> JwtVerifier | None:
    """The token verifier the settings describe; None when authentication is off (AUTH_DISABLED=true)."""
    if settings.jwt_secret is None and settings.jwks_url is None:
        return None
    jwks_client = None
    if settings.jwks_url is not None:
        jwks_client = LastGoodJwksClient(
            settings.jwks_url,
            lifespan=settings.jwks_cache_s,
            timeout=5,
            offline_max_age_s=settings.jwks_offline_max_age_s,
            cache_file=settings.jwks_cache_file,
        )
    return JwtVerifier(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_s=settings.jwt_leeway_s,
        secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret is not None else None,
        jwks_client=jwks_client,
    )


def _admission(settings: GatewaySettings, counters: NatsKvCounterStore) -> ChatAdmission:
    copro_policy, user_policy = settings.rate_limit_policies()
    return ChatAdmission(
        limiter=RateLimiter(store=counters, clock=time.time, fail_open=settings.rate_limit_fail_open),
        input_limits=settings.input_limits(),
        copro_policy=copro_policy,
        user_policy=user_policy,
    )
