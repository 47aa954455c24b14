"""Use case: a chat was requested; send it where it can run, or tell the caller why not."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from koprogo_router.adapters.bus import Bus
from koprogo_router.domain.routing import Refusal, RoutingRequest, choose_target
from koprogo_shared import subjects
from koprogo_shared.catalogue import find_model, known_model_ids
from koprogo_shared.events import (
    ChatFailed,
    ChatRequested,
    RunInference,
    chat_failed_id,
    derived_event_id,
    utc_now,
)
from koprogo_shared.node_registry import NodeRegistry

SOURCE = "koprogo/router"


@dataclass
class Dispatcher:
    bus: Bus
    registry: NodeRegistry

    async def on_chat_requested(self, request: ChatRequested) -> None:
        if _expired(request.deadline):
            await self._refuse(
                request, Refusal(504, "deadline_exceeded", "the request expired before routing")
            )
            return
        decision = choose_target(
            RoutingRequest(model=request.model),
            self.registry.alive(time.monotonic()),
            find_model,
            known_model_ids(),
        )
        if isinstance(decision, Refusal):
            await self._refuse(request, decision)
            return
        target = decision.targets[0]
        work = RunInference(
            id=derived_event_id(request.id, "run"),
            source=SOURCE,
            copro_id=request.copro_id,
            request_id=request.id,
            model=target.model,
            messages=request.messages,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            reply_subject=request.reply_subject,
            deadline=request.deadline,
        )
        await self.bus.publish(subjects.run_inference_edge(target.model), work)

    async def _refuse(self, request: ChatRequested, refusal: Refusal) -> None:
        failed = ChatFailed(
            id=chat_failed_id(request.id),
            source=SOURCE,
            copro_id=request.copro_id,
            request_id=request.id,
            status=refusal.status,
            error=refusal.error,
            message=refusal.message,
            known_models=list(refusal.known_models) or None,
        )
        # Durable first (the ledger records the failure), then straight to the waiting gateway.
        await self.bus.publish(subjects.chat_failed(request.copro_id), failed)
        await self.bus.reply(request.reply_subject, failed)


def _expired(deadline: datetime) -> bool:
    return deadline <= utc_now()
