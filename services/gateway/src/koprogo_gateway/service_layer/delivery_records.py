"""The delivery records: the ledger told, durably, which answers their callers got (`ChatsDelivered`).

The ledger counts an answer once a gateway delivered it (`ChatService.deliver`), so each
caller gets its answer only once its delivery is stored. The deliveries of one copro that
finish while that copro's previous record is on its way are stored by the next one, together
(`grouped_writes.py`): at one connection a record lists one delivery, under concurrent load
several, and a stored write per chat is saved (issue 17: nats-server's fsynced writes per chat
capped the requests per second). A record of one delivery is published in that chat's trace,
as before; one of several starts its own, linked to each chat's (`telemetry.in_traces_of`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from opentelemetry.context import Context

from koprogo_gateway.adapters.chat_bus import ChatBus
from koprogo_gateway.service_layer.chat_metrics import DELIVERIES_PER_RECORD
from koprogo_gateway.service_layer.grouped_writes import GroupedWrites
from koprogo_shared import subjects
from koprogo_shared.events import MAX_DELIVERIES_PER_RECORD, ChatCompleted, ChatsDelivered, Delivery
from koprogo_shared.telemetry import current_trace, in_traces_of

# A delivery, and the trace of the chat it ends (its record's publish is in that trace, or links to it).
_Item = tuple[Delivery, Context]


@dataclass
class DeliveryRecords:
    bus: ChatBus
    source: str
    _groups: GroupedWrites[str | None, _Item, None] = field(init=False)

    def __post_init__(self) -> None:
        self._groups = GroupedWrites(self._store, max_group=MAX_DELIVERIES_PER_RECORD, name="delivery record")

    async def record(self, completion: ChatCompleted, latency_ms: float) -> None:
        """Return once a stored record lists this delivery (raises the bus's GatewayError if none could be)."""
        delivery = Delivery(request_id=uuid.UUID(completion.request_id), latency_ms=latency_ms)
        await self._groups.submit(completion.copro_id, (delivery, current_trace()))

    async def _store(self, copro_id: str | None, items: list[_Item]) -> list[None]:
        record = ChatsDelivered(source=self.source, copro_id=copro_id, deliveries=[d for d, _ in items])
        with in_traces_of([trace for _, trace in items]):
            await self.bus.publish(subjects.chat_delivered(copro_id), record)
        DELIVERIES_PER_RECORD.observe(len(items))
        return [None] * len(items)
