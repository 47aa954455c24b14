"""The delivery records: the ledger told, durably, which answers their callers got (`ChatsDelivered`).

The ledger counts an answer once a gateway delivered it (`ChatService._answered`), so each
caller gets its answer only once its delivery is stored. The deliveries of one copro that
finish while that copro's previous record is on its way are stored by the next one, together
(`grouped_writes.py`): at one connection a record lists one delivery, under concurrent load
several, and a stored write per chat is saved (issue 17: nats-server's fsynced writes per chat
capped the requests per second).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from koprogo_gateway.adapters.chat_bus import ChatBus
from koprogo_gateway.service_layer.chat_metrics import DELIVERIES_PER_RECORD
from koprogo_gateway.service_layer.grouped_writes import GroupedWrites
from koprogo_shared import subjects
from koprogo_shared.events import MAX_DELIVERIES_PER_RECORD, ChatCompleted, ChatsDelivered, Delivery


@dataclass
class DeliveryRecords:
    bus: ChatBus
    source: str
    _groups: GroupedWrites[str | None, Delivery, None] = field(init=False)

    def __post_init__(self) -> None:
        self._groups = GroupedWrites(self._store, max_group=MAX_DELIVERIES_PER_RECORD, name="delivery record")

    async def record(self, completion: ChatCompleted, latency_ms: float) -> None:
        """Return once a stored record lists this delivery (raises the bus's GatewayError if none could be)."""
        delivery = Delivery(request_id=uuid.UUID(completion.request_id), latency_ms=latency_ms)
        await self._groups.submit(completion.copro_id, delivery)

    async def _store(self, copro_id: str | None, deliveries: list[Delivery]) -> list[None]:
        await self.bus.publish(
            subjects.chat_delivered(copro_id),
            ChatsDelivered(source=self.source, copro_id=copro_id, deliveries=deliveries),
        )
        DELIVERIES_PER_RECORD.observe(len(deliveries))
        return [None] * len(deliveries)
