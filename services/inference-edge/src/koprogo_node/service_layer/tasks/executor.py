"""The contract every grid task executor keeps.

An executor turns one task's input (parameters, and a document read from the JetStream object
store by the node's grid worker) into a JSON result. Pure parsing and validation live in
`koprogo_node.domain.tasks`; engines (PDF text, OCR, forecasting) in `koprogo_node.adapters.tasks`;
the model is the node's own `InferenceEngine`, passed in by the bootstrap.

Errors an executor raises:

    TaskInputError        the input cannot be processed (bad CSV row, a PDF with no page...):
                          the task fails for good, no other node is tried (HTTP 422-like).
    any other exception   this attempt failed (engine crash, model missing): the scheduler
                          may give the task to another node.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

# Content types the gateway accepts (sniffed from the bytes, never taken from the caller).
PDF = "application/pdf"
PNG = "image/png"
JPEG = "image/jpeg"
TIFF = "image/tiff"
TEXT = "text/plain"
CSV = "text/csv"


class TaskInputError(Exception):
    """The task's input cannot be processed; `message` says what and where (a row, a field)."""

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.row = row


@dataclass(frozen=True, slots=True)
class TaskDocument:
    """The task's document, as the gateway stored it."""

    data: bytes
    content_type: str
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class TaskRun:
    """What an executor receives: the caller's parameters (`input_data` without the document),
    the document if any, and a flag set when the task was cancelled or the node is stopping
    (check it between pieces of long work; raise `TaskCancelledError` when set)."""

    parameters: dict[str, Any]
    document: TaskDocument | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


class TaskCancelledError(Exception):
    """The run stopped because `TaskRun.cancelled` was set."""


@dataclass(frozen=True, slots=True)
class TaskOutput:
    """An executor's result (JSON-serialisable) and the model tokens it used (from the tokenizer)."""

    result: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TaskExecutor(ABC):
    """Runs one task type. `run` must not block the event loop: CPU-bound work goes to a thread
    (`asyncio.to_thread`), model calls go through the async `InferenceEngine`."""

    task_type: ClassVar[str]

    @abstractmethod
    async def run(self, run: TaskRun) -> TaskOutput: ...
