"""The node's side of the grid: run one assignment, report what happened.

The scheduler decides a task's state; the node only reports (`TaskStarted`, then one
`TaskResultReported`). An executor's `TaskInputError` is reported as "input_error" (no other node
is tried); any other failure as "failed" (the scheduler may try another node); an assignment past
its deadline is stopped and reported "failed". A cancelled assignment is not reported: the
scheduler has already decided.

Trust (docs/grid-trust.md): an assignment is run only when `grid_signing.assignment_refusal`
finds nothing (signed by the scheduler's key, for this node, its input digest matching what it
carries); a refused one is logged, counted and neither started nor reported (the scheduler takes
an unstarted replica back after its grace). Every report carries an energy attestation (Proof of
Green: `service_layer.energy`) and is signed by the node's key for the assignment it answers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from koprogo_node.service_layer.energy import DeclaredPower, EnergyMeter, EnergyProfile, attestation
from koprogo_node.service_layer.tasks.executor import (
    TaskCancelledError,
    TaskDocument,
    TaskExecutor,
    TaskInputError,
    TaskOutput,
    TaskRun,
)
from koprogo_shared.events import utc_now
from koprogo_shared.grid_signing import Signer, assignment_refusal, sign_report
from koprogo_shared.task_events import (
    DocumentRef,
    TaskAssignment,
    TaskResultReported,
    TaskStarted,
    TaskUsage,
    task_event_id,
)

log = logging.getLogger(__name__)


class DocumentUnavailableError(Exception):
    """The task's document cannot be read (gone from the store, or not what was submitted)."""


class ReportTooLargeError(Exception):
    """The report does not fit one message on the bus (the result is too large)."""


class TaskDocuments(ABC):
    """Where the node reads a task's document (the real one: the JetStream object store)."""

    @abstractmethod
    async def read(self, ref: DocumentRef) -> bytes:
        """The document's bytes; DocumentUnavailableError when missing or not matching `ref`."""


class TaskReports(ABC):
    """Where the node's reports go (the real one: JetStream, on the node's own subjects)."""

    @abstractmethod
    async def started(self, event: TaskStarted, copro_id: str | None) -> None: ...

    @abstractmethod
    async def reported(self, event: TaskResultReported, copro_id: str | None) -> None:
        """Store the report; ReportTooLargeError when it cannot travel as one message."""


class TaskCancels(ABC):
    """Where the node hears that the scheduler cancelled a task it runs (the real one: the cancels
    addressed to this node on NATS, `adapters.grid.NatsTaskCancels`)."""

    @abstractmethod
    def flag(self, task_id: str) -> AbstractAsyncContextManager[threading.Event]:
        """A flag set when `task_id` is cancelled while the block runs."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    outcome: Literal["completed", "failed", "input_error"]
    result: dict[str, Any] | None = None
    error: str | None = None
    message: str | None = None
    output: TaskOutput | None = None


class GridWorker:
    """Runs the assignments of one node.

    `signer`: the node's grid key, which signs every report (None: reports leave unsigned, and
    the scheduler refuses them; for tests that sign elsewhere). `scheduler_key`: the scheduler's
    public key (None: the key an assignment names is believed, the rest is still checked).
    `energy` and `meter`: what the attestations say (default: the declared power).
    `on_refusal(assignment, reason)`: told of each refused assignment (the node's metric).
    """

    def __init__(
        self,
        node_id: str,
        source: str,
        executors: Mapping[str, TaskExecutor],
        documents: TaskDocuments,
        reports: TaskReports,
        cancels: TaskCancels,
        clock: Callable[[], datetime] = utc_now,
        *,
        signer: Signer | None = None,
        scheduler_key: str | None = None,
        energy: EnergyProfile | None = None,
        meter: EnergyMeter | None = None,
        on_refusal: Callable[[TaskAssignment, str], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self._source = source
        self.executors = dict(executors)
        self._documents = documents
        self._reports = reports
        self._cancels = cancels
        self._clock = clock
        self.signer = signer
        self.scheduler_key = scheduler_key
        self.energy = energy or EnergyProfile()
        self.meter = meter or DeclaredPower(self.energy.power_watts)
        self._on_refusal = on_refusal
        # Refused assignments by reason, since the node started.
        self.refusals: Counter[str] = Counter()

    @property
    def public_key(self) -> str | None:
        """The key the node's reports are signed with (its heartbeats announce the node's own key)."""
        return None if self.signer is None else self.signer.public_key

    @property
    def task_types(self) -> list[str]:
        return sorted(self.executors)

    def refusal(self, assignment: TaskAssignment) -> str | None:
        """Why this node must not run `assignment` (logged and counted), or None when it may."""
        a = assignment
        reason = assignment_refusal(a, self.node_id, self.scheduler_key)
        if reason is not None:
            self.refusals[reason] += 1
            log.warning(
                "assignment refused (%s): task %s attempt %d (%s), signed by %s; not run, not reported",
                reason,
                a.task_id,
                a.attempt,
                a.task_type,
                a.signer or "nobody",
            )
            if self._on_refusal is not None:
                self._on_refusal(a, reason)
        return reason

    async def run(self, assignment: TaskAssignment) -> TaskResultReported | None:
        """Run the assignment and report it; the report, or None when it was refused or cancelled."""
        a = assignment
        if self.refusal(a) is not None:
            return None
        # Cancelled by the scheduler (or expired) while it runs: stopped at the executor's next check.
        async with self._cancels.flag(a.task_id) as cancelled:
            await self._reports.started(
                TaskStarted(
                    id=task_event_id(a.task_id, f"started:{a.attempt}"),
                    source=self._source,
                    copro_id=a.copro_id,
                    task_id=a.task_id,
                    attempt=a.attempt,
                    node_id=self.node_id,
                ),
                a.copro_id,
            )
            mark = await self.meter.start()
            began = time.perf_counter()
            outcome = await self._outcome(a, cancelled)
            seconds = time.perf_counter() - began
            if outcome is None:
                return None
            energy = await self.meter.used(mark, seconds)
            output = outcome.output
            unsigned = TaskResultReported(
                id=task_event_id(a.task_id, f"reported:{a.attempt}"),
                source=self._source,
                copro_id=a.copro_id,
                task_id=a.task_id,
                attempt=a.attempt,
                node_id=self.node_id,
                outcome=outcome.outcome,
                result=outcome.result,
                error=outcome.error,
                message=outcome.message,
                usage=TaskUsage(
                    prompt_tokens=output.prompt_tokens if output else 0,
                    completion_tokens=output.completion_tokens if output else 0,
                    duration_s=round(seconds, 3),
                ),
                attestation=attestation(self.energy, energy, seconds),
            )
            report = self._signed(unsigned, a)
            try:
                await self._reports.reported(report, a.copro_id)
            except ReportTooLargeError as exc:
                # Another node would make the same result: the task fails for good, and says why.
                too_large = unsigned.model_copy(
                    update={
                        "id": task_event_id(a.task_id, f"reported-too-large:{a.attempt}"),
                        "outcome": "input_error",
                        "result": None,
                        "error": "result_too_large",
                        "message": f"the result does not fit one message on the bus ({exc}); send a shorter document",
                    }
                )
                report = self._signed(too_large, a)
                await self._reports.reported(report, a.copro_id)
            return report

    def _signed(self, report: TaskResultReported, assignment: TaskAssignment) -> TaskResultReported:
        return report if self.signer is None else sign_report(self.signer, report, assignment)

    async def _outcome(self, a: TaskAssignment, cancelled: threading.Event) -> _Outcome | None:
        executor = self.executors.get(a.task_type)
        if executor is None:
            return _Outcome("failed", error="task_type_not_run", message=f"this node runs no {a.task_type}")
        seconds = (a.deadline - self._clock()).total_seconds()

        async def read_and_run() -> TaskOutput:
            document = None
            if a.document is not None:
                data = await self._documents.read(a.document)
                document = TaskDocument(data, a.document.content_type, a.document.filename)
            return await executor.run(
                TaskRun(parameters=dict(a.parameters), document=document, cancelled=cancelled)
            )

        try:
            # The document's read counts against the deadline too: a stalled read ends the attempt.
            output = await asyncio.wait_for(read_and_run(), timeout=max(seconds, 0.001))
        except TaskInputError as exc:
            return _Outcome("input_error", error="invalid_input", message=exc.message)
        except TaskCancelledError:
            return None
        except TimeoutError:
            cancelled.set()
            return _Outcome(
                "failed", error="deadline_missed", message=f"{a.task_type} did not finish within its deadline"
            )
        except DocumentUnavailableError as exc:
            return _Outcome("failed", error="document_unavailable", message=str(exc))
        except Exception as exc:
            log.exception("task %s (%s) failed on this node", a.task_id, a.task_type)
            return _Outcome("failed", error="executor_error", message=f"{type(exc).__name__}: {exc}")
        if cancelled.is_set():
            return None
        return _Outcome("completed", result=output.result, output=output)
