"""Where task documents are kept for the node that runs the task: a port, the JetStream object
store (`subjects.DOCUMENTS_BUCKET`) and an in-memory fake.

A document is stored before its TaskSubmitted is published, under the task id, so no event
ever names a document that is not there.
"""

from __future__ import annotations

import abc
import asyncio

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta
from nats.js.object_store import ObjectStore

from koprogo_gateway.domain.errors import BusUnavailableError
from koprogo_shared.subjects import DOCUMENTS_BUCKET
from koprogo_shared.task_events import DocumentRef


class DocumentStore(abc.ABC):
    @abc.abstractmethod
    async def put(self, ref: DocumentRef, data: bytes) -> None:
        """Store `data` under `ref.object_name`; BusUnavailableError (503) if it is not stored."""


class NatsDocumentStore(DocumentStore):
    """The JetStream object store, opened once at start-up (the setup step declared it)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @classmethod
    async def open(cls, js: JetStreamContext) -> NatsDocumentStore:
        return cls(await js.object_store(DOCUMENTS_BUCKET))

    async def put(self, ref: DocumentRef, data: bytes) -> None:
        meta = ObjectMeta(
            name=ref.object_name,
            description=ref.filename or ref.content_type,
            # What the node checks before it trusts the bytes it reads back.
            headers={"Content-Type": [ref.content_type], "KoproGo-Sha256": [ref.sha256]},
        )
        try:
            await self._store.put(ref.object_name, data, meta=meta)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise BusUnavailableError(
                f"the document store did not take the document ({type(exc).__name__}); nothing was "
                "submitted, retry later"
            ) from exc


class FakeDocumentStore(DocumentStore):
    """In memory; `refuse_with` makes every put raise it, as an unreachable store does."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[DocumentRef, bytes]] = {}
        self.refuse_with: Exception | None = None

    async def put(self, ref: DocumentRef, data: bytes) -> None:
        await asyncio.sleep(0)
        if self.refuse_with is not None:
            raise self.refuse_with
        self.stored[ref.object_name] = (ref, data)
