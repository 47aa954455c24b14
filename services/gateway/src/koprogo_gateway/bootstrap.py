"""Composition root: the gateway's adapters are built here, once, at start-up."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_gateway.adapters.replies import ReplyWaiter
from koprogo_gateway.adapters.stats_repository import PostgresStatsRepository
from koprogo_gateway.service_layer.chat import ChatService
from koprogo_gateway.settings import GatewaySettings
from koprogo_shared import subjects
from koprogo_shared.heartbeats import follow_heartbeats
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from koprogo_shared.node_registry import NodeRegistry


@dataclass
class Gateway:
    settings: GatewaySettings
    nc: NATS
    js: JetStreamContext
    pool: asyncpg.Pool
    registry: NodeRegistry
    chat: ChatService
    stats: PostgresStatsRepository

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()
        with contextlib.suppress(Exception):
            await self.pool.close()


async def bootstrap(settings: GatewaySettings) -> Gateway:
    nc, js = await connect_nats(settings.nats_url, f"koprogo-gateway-{settings.gateway_id}")
    try:
        await ensure_streams(js)
        # The ledger owns the schema; the gateway only reads it.
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=settings.db_pool_max)
    except BaseException:
        await nc.close()
        raise
    replies = ReplyWaiter()
    reply_subject = subjects.gateway_reply(settings.gateway_id)
    await replies.start(nc, reply_subject)
    registry = NodeRegistry()
    await follow_heartbeats(nc, registry)
    return Gateway(
        settings=settings,
        nc=nc,
        js=js,
        pool=pool,
        registry=registry,
        chat=ChatService(
            js=js,
            replies=replies,
            reply_subject=reply_subject,
            timeout_s=settings.chat_timeout_s,
            registry=registry,
        ),
        stats=PostgresStatsRepository(pool),
    )
