"""A pull consumer's batches, read with one callback per message (issue 17: the ledger's CPU).

nats-py's `PullSubscription.fetch` waits for each message of a batch on its own: a task, an
`asyncio.wait_for` and a uuid4 per message, ~46 µs of CPU per message on a 2-vCPU VM where a
callback that appends it to a list costs ~12 (bench/README.md, *`pull_fetch.py`*); the ledger
reads every stored event that way. `BatchPuller.fetch` keeps nats-py's protocol and meaning, on
a subscription of its own:

* what the consumer has now, without waiting: a `no_wait` request for up to `batch` messages,
  answered by the messages there are and a "no messages" (404) or "request timeout" (408) status
  (for a batch of one, skipped: the lingering request is answered at once if a message is there,
  as nats-py's `fetch(1)` does it);
* when there was none, a request that lingers on the server until the call's `timeout` (its
  `expires` a little shorter), returning once its batch is full or the server ended it (408 at
  expiry), or at the deadline, with what came; `linger_batch` makes that request smaller than
  the batch (1: return with the first message stored) or leaves it out (0);
* nothing at all by the deadline: `nats.errors.TimeoutError`, as nats-py raises it.

Each request has its own reply subject (`<inbox>.<n>`), so a status arriving late for an earlier
request (the deadline passed just before the server's 408) never ends a later one; messages are
the consumer's whichever request they answer, and one arriving after its fetch gave up is kept
for the next fetch (nats-py keeps them in its queue the same way), as are those of a fetch cancelled
midway; `close` NAKs what is still kept. Statuses: heartbeats (100) and
409 (a pull the server refused or cut, e.g. too many waiting) are passed over, as nats-py does; 503
(no responders: the durable was deleted) raises `nats.js.errors.ServiceUnavailableError`, any other
status `nats.js.errors.APIError`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError

from koprogo_shared.decisions import quietly
from koprogo_shared.nats_privates import api_prefix, client_of

log = logging.getLogger(__name__)

# The lingering request expires this much before the call's deadline, so the server's 408
# normally arrives before the caller stops waiting (nats-py uses the same 100 µs).
_EXPIRES_MARGIN_NS = 100_000
_ENDS_REQUEST = (js_api.StatusCode.NO_MESSAGES, js_api.StatusCode.REQUEST_TIMEOUT)
# The 409 that ends a request with a byte cap: the next message would have passed it.
_MAX_BYTES_REACHED = "message size exceeds maxbytes"
_PASSED_OVER = (js_api.StatusCode.CONTROL_MESSAGE, js_api.StatusCode.CONFLICT)


class BatchPuller:
    """Batches of one durable pull consumer, for one loop at a time (one request in flight)."""

    def __init__(self, nc: NATS, next_subject: str, inbox: str) -> None:
        self._nc = nc
        self._next_subject = next_subject
        self._inbox = inbox
        self._messages: collections.deque[Msg] = collections.deque()
        self._ended: set[str] = set()  # reply subjects whose request the server ended
        self._error: Msg | None = None
        self._arrived = asyncio.Event()
        self._requests = 0
        self._sub: Subscription | None = None
        # Until when a lingering request of ours may still wait at the server (monotonic): one
        # the server has not ended (a fetch cancelled, or one that returned with messages kept
        # from an earlier request's late answer).
        self._open_until = 0.0

    @classmethod
    async def bind(cls, js: JetStreamContext, stream: str, durable: str) -> BatchPuller:
        """A puller of the declared durable `durable` on `stream` (no JetStream API call)."""
        nc = client_of(js)
        prefix = api_prefix(js)
        puller = cls(nc, f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}", nc.new_inbox())
        puller._sub = await nc.subscribe(f"{puller._inbox}.*", cb=puller._on_message)
        return puller

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get(js_api.Header.STATUS) if msg.headers else None
        if status is None:
            self._messages.append(msg)
        elif status in _ENDS_REQUEST or (
            status == js_api.StatusCode.CONFLICT
            and (msg.headers or {}).get(js_api.Header.DESCRIPTION, "").lower() == _MAX_BYTES_REACHED
        ):
            self._ended.add(msg.subject)
        elif status not in _PASSED_OVER:
            self._error = msg
        else:
            return
        self._arrived.set()

    async def fetch(
        self, batch: int, timeout: float, max_bytes: int = 0, linger_batch: int | None = None
    ) -> list[Msg]:
        """Up to `batch` messages (see the module's docstring); `nats.errors.TimeoutError` if none
        came within `timeout` seconds. `max_bytes` (0: none) caps what one request brings: the
        server stops before the message that would pass it, and ends the request (a 409 "Message
        Size Exceeds MaxBytes"). It must be above the largest message (the server's
        `max_payload`): one bigger than the cap is never delivered. `linger_batch` (at most
        `batch`): what the lingering request asks for when nothing was there; 1 returns with the
        first message stored (a dispatcher that runs each message as soon as it comes), 0 sends
        none (what is there now, or `nats.errors.TimeoutError` at once)."""
        deadline = time.monotonic() + timeout
        lingering = batch if linger_batch is None else min(linger_batch, batch)
        taken = self._take(batch)
        try:
            if len(taken) < batch and (1 < batch or lingering == 0):
                # What is there now, without waiting. Not for a batch of one that may linger: the
                # lingering request below is answered at once by a message that is there, and
                # there is no part of a batch to return early, so the probe would only cost a
                # request and a 404 more.
                taken += await self._request(batch - len(taken), deadline, no_wait=True, max_bytes=max_bytes)
            if not taken and lingering > 0:
                remaining_ns = int((deadline - time.monotonic()) * 1e9) - _EXPIRES_MARGIN_NS
                if remaining_ns > 0:
                    taken = await self._request(
                        lingering, deadline, expires_ns=remaining_ns, max_bytes=max_bytes
                    )
        except BaseException:
            self._messages.extendleft(reversed(taken))  # cancelled, or an error: kept, in order
            raise
        if not taken:
            raise nats.errors.TimeoutError
        return taken

    async def _request(
        self,
        batch: int,
        deadline: float,
        *,
        no_wait: bool = False,
        expires_ns: int | None = None,
        max_bytes: int = 0,
    ) -> list[Msg]:
        self._requests += 1
        reply = f"{self._inbox}.{self._requests}"
        body: dict[str, object] = {"batch": batch}
        if no_wait:
            body["no_wait"] = True
        if expires_ns is not None:
            body["expires"] = expires_ns
        if max_bytes:
            body["max_bytes"] = max_bytes
        self._ended.clear()
        ends = time.monotonic() + (expires_ns or 0) / 1e9
        taken: list[Msg] = []
        try:
            # Inside: a publish cut short may still have buffered the request, which then waits
            # at the server (`_open_until` below).
            await self._nc.publish(self._next_subject, json.dumps(body).encode(), reply=reply)
            while True:
                taken += self._take(batch - len(taken))
                if self._error is not None:
                    error, self._error = self._error, None
                    APIError.from_msg(error)
                if len(taken) == batch or reply in self._ended:
                    return taken
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return taken
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    pass
        except BaseException:
            # An error status, or the fetch cancelled: what came is kept for the next fetch (or
            # NAKed by `close`), in order, not left to its ack wait.
            self._messages.extendleft(reversed(taken))
            raise
        finally:
            if expires_ns is not None and reply not in self._ended:
                self._open_until = max(self._open_until, ends)

    @property
    def queued(self) -> tuple[Msg, ...]:
        """Messages kept for the next fetch: they came after the request they answer gave up, or
        beyond what the fetch that sent it returned (it returns once its batch is full, with
        messages already kept, while the server may still bring what it asked for)."""
        return tuple(self._messages)

    async def wait_queued(self) -> None:
        """Return once a message is kept for the next fetch (for a loop not fetching meanwhile)."""
        while not self._messages:
            self._arrived.clear()
            await self._arrived.wait()

    def _take(self, most: int) -> list[Msg]:
        taken: list[Msg] = []
        while self._messages and len(taken) < most:
            taken.append(self._messages.popleft())
        return taken

    async def close(self) -> None:
        """Unsubscribe, then NAK the messages kept for a fetch that will not come (`queued`): they
        are redelivered within a second rather than after their ack wait. While a lingering
        request of ours may still wait at the server, the NAKs ask for a redelivery only once it
        expired: with plain NAKs a script saw nats-server 2.15.1 lose one message of two for
        longer than the test waited, and redeliver another twice, or out of order
        (docs/decisions.md, *The request and its routing stored once*).
        Quiet: a connection already closed took the subscription with it, and a NAK that cannot
        be sent leaves the message to its ack wait."""
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                log.debug("unsubscribing %s failed", self._next_subject, exc_info=True)
        delay = self._open_until - time.monotonic()
        while self._messages:
            await quietly(self._messages.popleft().nak(delay=delay + 0.05 if delay > 0 else None))
