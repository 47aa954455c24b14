"""A call's two companions: the pieces of a streamed answer going out, and the caller leaving."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from koprogo_cloud.adapters.outcomes import OutcomeSink
from koprogo_shared import chat_outcomes
from koprogo_shared.events import RunInference

log = logging.getLogger(__name__)
T = TypeVar("T")


class DeltaSender:
    """Sends a streamed answer's pieces to the caller, numbered from 0; counts what went out."""

    def __init__(self, sink: OutcomeSink, source: str, work: RunInference) -> None:
        self._sink = sink
        self._source = source
        self._work = work
        self.sent = 0

    async def send(self, piece: str) -> None:
        delta = chat_outcomes.delta(self._work, source=self._source, index=self.sent, piece=piece)
        self.sent += 1
        try:
            await self._sink.delta(delta, self._work.reply_subject)
        except Exception as exc:  # a lost piece shows as a gap in the indexes; the completion has it all
            log.debug("delta %d of %s not sent: %r", delta.index, self._work.request_id, exc)


async def unless_caller_leaves(call: Coroutine[Any, Any, T], gone: asyncio.Event) -> asyncio.Task[T]:
    """Run `call` until it ends or `gone` is set, whichever comes first; its task, done or cancelled.

    Cancelling a provider call closes its HTTP request (and a stream's connection), which is
    how a provider learns that nobody reads the answer. The task is cancelled too when the
    caller of this function is (the worker stops).
    """
    task = asyncio.create_task(call)
    left = asyncio.create_task(gone.wait())
    try:
        await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        task.cancel()  # no-op when it is done
        await asyncio.gather(task, left, return_exceptions=True)
    return task
