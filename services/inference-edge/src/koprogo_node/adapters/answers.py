"""The node's record of the answers it stored: a work item redelivered after its answer reached the
event log is answered from here, not generated again (issue 12, finding 4).

The cloud worker looks its stored answers up in KOPROGO_EVENTS (a trusted service may read it);
an edge node may not read the event log (it would read every copro's chats), so it keeps its own
record of what it stored: each completion once its durable copy is stored, before the item is
acknowledged. A node killed between the two, or whose acknowledgement was lost (NATS restarted),
gets the item again and sends the recorded answer. The record is on disk, so a node restarted
after being killed still has it; another node taking the item over has not (it generates, and
`deliver_chat_outcome` keeps its text from the caller when the first one's is stored).

Kept `keep_s` (6 h, far past any chat's deadline) from the answer's time, then removed.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

from pydantic import ValidationError

from koprogo_shared.events import ChatCompleted, utc_now

log = logging.getLogger(__name__)

KEEP_S = 6 * 3600.0
# How often at most the expired answers are looked for (when an answer is recorded).
PRUNE_EVERY_S = 60.0


class AnswerRecord(abc.ABC):
    """The completions this node stored, by request id."""

    @abc.abstractmethod
    async def find(self, request_id: str) -> ChatCompleted | None:
        """The completion this node stored for `request_id`, if it is still kept."""

    @abc.abstractmethod
    async def keep(self, answer: ChatCompleted) -> None:
        """Record `answer` (its durable copy is stored); a failure is logged, never raised."""


class MemoryAnswerRecord(AnswerRecord):
    """In memory: lost when the node stops (and the fake for unit tests)."""

    def __init__(self, keep_s: float = KEEP_S) -> None:
        self.answers: dict[str, ChatCompleted] = {}
        self.keep_s = keep_s

    async def find(self, request_id: str) -> ChatCompleted | None:
        answer = self.answers.get(request_id)
        if answer is not None and utc_now() >= answer.time + timedelta(seconds=self.keep_s):
            del self.answers[request_id]
            return None
        return answer

    async def keep(self, answer: ChatCompleted) -> None:
        self.answers[answer.request_id] = answer


class FileAnswerRecord(AnswerRecord):
    """One JSON file per request in `directory` (mode 0700), written whole or not at all."""

    def __init__(self, directory: Path, keep_s: float = KEEP_S) -> None:
        self.directory = directory
        self.keep_s = keep_s
        self._pruned_at = 0.0

    def _path(self, request_id: str) -> Path | None:
        # Request ids are UUIDs (checked before any work): anything else names no file.
        try:
            return self.directory / f"{uuid.UUID(request_id)}.json"
        except ValueError:
            return None

    async def find(self, request_id: str) -> ChatCompleted | None:
        path = self._path(request_id)
        if path is None:
            return None
        # Nearly every item is a first delivery with nothing recorded: a stat (a few µs, the
        # directory's entries cached) spares it the thread-pool hop a read takes (~50 µs).
        if not path.exists():
            return None
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error(
                "the recorded answer of request %s cannot be read (%r): answering again", request_id, exc
            )
            return None
        try:
            answer = ChatCompleted.model_validate_json(data)
        except ValidationError:
            log.error("the recorded answer of request %s is unreadable: answering again", request_id)
            return None
        if utc_now() >= answer.time + timedelta(seconds=self.keep_s):
            return None
        return answer

    async def keep(self, answer: ChatCompleted) -> None:
        path = self._path(answer.request_id)
        if path is None:
            return
        try:
            await asyncio.to_thread(self._write, path, answer.model_dump_json().encode())
        except OSError as exc:
            # Only a redelivery of this item would run the model again.
            log.warning("could not record the answer of request %s: %r", answer.request_id, exc)
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            await asyncio.to_thread(self._prune)

    def _write(self, path: Path, data: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)

    def _prune(self) -> None:
        expired_before = time.time() - self.keep_s
        try:
            for path in self.directory.glob("*.json"):
                try:
                    if path.stat().st_mtime < expired_before:
                        path.unlink()
                except FileNotFoundError:
                    pass
        except OSError as exc:
            log.warning("could not remove expired answers from %s: %r", self.directory, exc)
