"""One way for a worker (edge node, cloud deployment) to handle a RunInference work item.

`WorkItemHandler.handle` is the per-message handler given to `consumer.run_pull_consumer`;
it decides as the consumer expects, by returning or raising:

    the payload is no RunInference   ValidationError: dead-lettered
    its ids are not UUIDs, or the    PoisonMessageError: dead-lettered
    use case raises a `poison` error
    the use case returns             ack (it published the outcome itself; it is told whether
                                     the item was delivered before)
    the use case raises anything     re-raised: NAKed and retried; on the last delivery the
    else                             caller is told first (`report_failure`: a ChatFailed
                                     500 "inference_failed"), then the item is dead-lettered

While the use case runs, in-progress acks keep the item with this worker (`kept_alive`); if
the worker dies, the server hands it to another one `ack_wait` after the last of them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from nats.aio.msg import Msg

from koprogo_shared import subjects
from koprogo_shared.chat_outcomes import UnusableIdsError
from koprogo_shared.decisions import PoisonMessageError
from koprogo_shared.events import ChatRequested, RunInference
from koprogo_shared.kept_alive import held_alone, kept_alive
from koprogo_shared.leaf_site import made_at_another_site
from koprogo_shared.routing.decision import work_of

log = logging.getLogger(__name__)


class RunWork(Protocol):
    """Runs the work item and publishes its outcome (ChatCompleted, ChatFailed...); `redelivered`:
    the item was delivered before (that delivery may have stored its answer before dying)."""

    def __call__(self, work: RunInference, /, *, redelivered: bool) -> Awaitable[object]: ...


# Publishes a ChatFailed(status, error, message) for the work item.
ReportFailure = Callable[[RunInference, int, str, str], Awaitable[object]]

LAST_DELIVERY_STATUS = 500
LAST_DELIVERY_ERROR = "inference_failed"


def is_last_delivery(num_delivered: int, max_deliver: int) -> bool:
    """Whether the consumer dead-letters the item if this delivery fails too."""
    return num_delivered >= max_deliver


def last_delivery_message(worker_name: str, max_deliver: int) -> str:
    """What the caller reads when every delivery of its work item failed."""
    return f"{worker_name} could not answer after {max_deliver} attempts"


def _run_inference(data: bytes, _redelivered: bool) -> RunInference:
    return RunInference.model_validate_json(data)


def routed_work(data: bytes, redelivered: bool) -> RunInference:
    """The work item of a request a gateway routed (as the router would have made it): a
    `WorkItemHandler`'s `decode` for the consumers of routed requests (cloud deployments, edge
    pools), given with `routed_copro_mismatch` and `this_site_only`."""
    request = ChatRequested.model_validate_json(data)
    if request.routed is None:
        raise PoisonMessageError("a request on a routed subject carries no routing plan")
    return work_of(request, request.routed, source=request.source, may_be_answered=redelivered)


def routed_copro_mismatch(subject: str, work: RunInference) -> str | None:
    """Why a routed request must not run (its subject's copro is not its body's), else None: a
    `WorkItemHandler`'s `subject_check` for the consumers of routed requests."""
    if subjects.routed_request_copro(subject) == subjects.subject_token(work.copro_id):
        return None
    return (
        f"request on {subject} names copro {work.copro_id!r} in its body: refused (subject and body disagree)"
    )


class WorkItemHandler:
    """Decodes a work item, keeps its ack deadline alive, runs the use case, reports a final failure.

    `worker_name` names this worker in the caller's error ("the edge node"); `poison` are
    the use case's errors for a work item that can never be handled.
    """

    def __init__(
        self,
        run: RunWork,
        report_failure: ReportFailure,
        *,
        ack_wait_s: float,
        max_deliver: int,
        worker_name: str,
        poison: tuple[type[Exception], ...] = (),
        # Why an item's subject refuses its body (e.g. the cloud work's copro), else None: such an
        # item is dead-lettered before it runs, the caller not told (its reply subject is suspect).
        subject_check: Callable[[str, RunInference], str | None] | None = None,
        # The work item in a message's payload: a RunInference, or what another kind of message
        # makes of itself (a request the gateway routed: `routing.decision.work_of`). Its
        # ValidationError is dead-lettered by the consumer; `redelivered` as `RunWork`'s.
        decode: Callable[[bytes, bool], RunInference] | None = None,
        # Refuse (dead-letter, never run) a message a building's stream brought into this site's
        # (`leaf_site.made_at_another_site`): the requests a gateway routed, which a building's
        # gateway never does; one coming that way would skip this site's router and rate limits.
        this_site_only: bool = False,
    ) -> None:
        self._run = run
        self._report_failure = report_failure
        self._ack_wait_s = ack_wait_s
        self._max_deliver = max_deliver
        self._worker_name = worker_name
        self._poison: tuple[type[Exception], ...] = (UnusableIdsError, *poison)
        self._subject_check = subject_check
        self._decode = decode or _run_inference
        self._this_site_only = this_site_only

    async def handle(self, msg: Msg) -> None:
        """Return to ack; raise to NAK (or dead-letter on the last delivery), as the shared consumer does."""
        delivered = msg.metadata.num_delivered
        if self._this_site_only and made_at_another_site(msg.headers):
            raise PoisonMessageError(f"{msg.subject} came from another site's stream: not run here")
        work = self._decode(msg.data, delivered > 1)  # malformed -> dead-lettered by the consumer
        if self._subject_check is not None and (refused := self._subject_check(msg.subject, work)):
            raise PoisonMessageError(refused)
        if delivered > self._max_deliver:
            # Past its last allowed delivery (its dead-letter publish failed, or the worker died on
            # it; the server keeps redelivering, see `consumer`): never run again. The caller is
            # told (again, if it was: the failure's id is de-duplicated), then it is dead-lettered.
            await kept_alive(
                self._report_final_failure(work, f"delivery {delivered}, past the limit"),
                held_alone(msg),
                self._ack_wait_s,
            )
            raise PoisonMessageError(
                f"delivered {delivered} times, past the limit of {self._max_deliver}: not run again"
            )
        # Kept ours while it runs and while a failure on its last delivery is reported (a
        # publish that may retry for longer than `ack_wait`): never delivered past the limit.
        await kept_alive(self._run_reported(work, delivered), held_alone(msg), self._ack_wait_s)

    async def _run_reported(self, work: RunInference, delivered: int) -> None:
        try:
            await self._run(work, redelivered=delivered > 1)
        except self._poison as exc:
            raise PoisonMessageError(str(exc)) from None
        except Exception as exc:
            if is_last_delivery(delivered, self._max_deliver):
                # The consumer dead-letters this item now; the caller must not wait for nothing.
                await self._report_final_failure(work, type(exc).__name__)
            raise

    async def _report_final_failure(self, work: RunInference, why: str) -> None:
        log.error("request %s failed on its last delivery: %s", work.request_id, why)
        with contextlib.suppress(Exception):
            await self._report_failure(
                work,
                LAST_DELIVERY_STATUS,
                LAST_DELIVERY_ERROR,
                last_delivery_message(self._worker_name, self._max_deliver),
            )
