"""Composition root: the cloud worker's adapters are built here and nowhere else.

Start-up: the ops port (/health at once, /ready once NATS is connected), NATS, the
streams (declared by the router or the ledger: this identity only waits for them),
one dispatching consumer per deployment on each of its two durables (the router's work items,
and the requests gateways routed to it on the audit log), sharing the deployment's `concurrency`
slots: at most that many provider calls at once across both, and at most one item per durable
fetched while every slot is taken (`dispatching.start_dispatching_consumer`); then the first
statuses. A deployment without a key still gets its consumers: its work is answered with a
fallback-worthy failure instead of waiting in the queue, and its status says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping

from koprogo_cloud.adapters.anthropic_provider import AnthropicProvider
from koprogo_cloud.adapters.openai_provider import OpenAIProvider
from koprogo_cloud.adapters.outcomes import NatsOutcomeSink
from koprogo_cloud.adapters.providers import ChatProvider
from koprogo_cloud.domain.deployments import Deployment, key_status
from koprogo_cloud.entrypoints.nats_worker import routed_consumer, work_consumer, work_item_handler
from koprogo_cloud.entrypoints.status import StatusPublisher
from koprogo_cloud.service_layer.inference import CloudInferenceService, DeploymentRuntime
from koprogo_cloud.settings import CloudSettings
from koprogo_shared import subjects
from koprogo_shared.dispatching import start_dispatching_consumer
from koprogo_shared.nats_connection import connect_nats, wait_for_streams
from koprogo_shared.ops_http import ops_server
from koprogo_shared.service_runtime import until_stopped_or_failed
from koprogo_shared.slots import Slots

log = logging.getLogger(__name__)


def build_provider(deployment: Deployment, api_key: str | None) -> ChatProvider:
    if deployment.provider == "anthropic":
        if api_key is None:
            raise ValueError("an Anthropic deployment needs a key")
        return AnthropicProvider(deployment, api_key)
    return OpenAIProvider(deployment, api_key)


def build_runtimes(deployments: list[Deployment], environ: Mapping[str, str]) -> list[DeploymentRuntime]:
    """Each deployment with its provider client, or with the reason it has none (never the key)."""
    runtimes = []
    for dep in deployments:
        key, reason = key_status(dep, environ)
        provider: ChatProvider | None = None
        if reason is None:
            provider = build_provider(dep, key)
            log.info(
                "deployment %s (%s): %s; passes %s%s",
                dep.id,
                dep.provider,
                ", ".join(sorted(dep.models)),
                ", ".join(sorted(dep.effective_features)) or "no controls",
                "; streams" if dep.streams else "; answers whole",
            )
        else:
            # A provider without a key is the normal state of a stack that uses none: not a warning.
            log.info("deployment %s (%s) unavailable: %s", dep.id, dep.provider, reason)
        runtimes.append(DeploymentRuntime(dep, provider, reason))
    return runtimes


async def run_cloud(
    settings: CloudSettings, stop: asyncio.Event, *, environ: Mapping[str, str] | None = None
) -> None:
    """Run the cloud worker until `stop` is set (raises DeploymentConfigError on a bad configuration)."""
    env = os.environ if environ is None else environ
    runtimes = build_runtimes(settings.deployments(env), env)
    nc, js = await connect_nats(
        settings.nats_url,
        "koprogo-cloud",
        nkey_seed_file=settings.nats_nkey_seed_file,
        inbox_root=settings.nats_inbox_root,
    )

    async def ready() -> dict[str, bool]:
        return {"nats": nc.is_connected}

    server = None
    ops_task: asyncio.Task[None] | None = None
    if settings.ops_port:
        server = ops_server(settings.ops_host, settings.ops_port, ready)
        ops_task = asyncio.create_task(server.serve(), name="cloud-ops")
    sink = NatsOutcomeSink(nc, js)
    service = CloudInferenceService(runtimes, sink)
    statuses = StatusPublisher(nc, service, settings.status_interval_s)
    consumers: list[asyncio.Task[None]] = []
    try:
        await wait_for_streams(js, [subjects.WORK_STREAM, subjects.EVENTS_STREAM])
        await sink.start()
        for runtime in runtimes:
            dep = runtime.deployment
            calls = Slots(dep.concurrency)  # shared by its two durables
            for routed, consumer in ((False, work_consumer), (True, routed_consumer)):
                spec = consumer(dep.id, settings.ack_wait_s, settings.max_deliver, dep.concurrency)
                handler = work_item_handler(
                    service, dep.id, settings.ack_wait_s, settings.max_deliver, routed=routed
                )
                consumers.append(
                    await start_dispatching_consumer(
                        js, spec, handler.handle, stop, slots=calls, name=spec.durable
                    )
                )
        # After the consumers: a first status says the routed requests are taken (`routed_consumer`).
        await statuses.start()
        log.info("cloud worker ready: %s", ", ".join(service.runtimes))
        await until_stopped_or_failed(stop, consumers)
    finally:
        stop.set()
        if consumers:
            # Consumers stop fetching once `stop` is set; let the in-flight calls finish.
            await asyncio.wait(consumers, timeout=settings.shutdown_grace_s)
            for task in consumers:
                task.cancel()  # the shared consumer NAKs what it still holds
            await asyncio.gather(*consumers, return_exceptions=True)
        await statuses.stop()
        await sink.close()
        if server is not None:
            server.should_exit = True
        if ops_task is not None:
            await asyncio.gather(ops_task, return_exceptions=True)
        for runtime in runtimes:
            if runtime.provider is not None:
                with contextlib.suppress(Exception):
                    await runtime.provider.close()
        with contextlib.suppress(Exception):
            await nc.drain()
        log.info("cloud worker stopped")
