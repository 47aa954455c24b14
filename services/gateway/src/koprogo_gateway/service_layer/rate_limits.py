"""Use case: count a request against its rate-limit policies, exactly, whatever the number of gateways.

Each (policy, subject, window) has one counter in a shared store. A request is admitted
only through a compare-and-set that moves a counter from `n < limit` to `n + 1`: the store
stores a write only if the key is still at the revision the writer read, so two writers
(in one gateway or in two) can never both move it from the same `n`, and a counter can
never pass its limit. A writer that lost reads again and retries. Reading `n >= limit`
refuses the request without writing anything.

Within one gateway, the requests for one key are counted by one writer at a time, in groups
(`grouped_writes.py`): while a write is on its way to the store, the requests that arrive for the same key wait, and
the next write counts them all at once (`n + k`, or only as many as the limit leaves room for;
the others are refused on the count just written). Compare-and-set conflicts then only happen
between gateways (or with this gateway's own give-backs), the revision this gateway wrote last
usually lets the next write go without reading first, and under concurrent load a stored write counts several requests (issue 17:
two stored writes per chat were a third of nats-server's work at 16 connections).

A request's counters (its user's and its copro's) are written at the same time, so a chat
waits for one write, not two in turn. When one policy refuses a request another counted, that
counter is decremented again (also by compare-and-set): refused requests do not use up another
policy's quota (for the moment between the two writes, another request may find that slot
taken). A request one of whose counters this gateway last saw full is counted in turn instead,
narrowest first, and stops at the first refusal: a user past the limit costs a read per request,
never writes and give-backs on the copro's counter.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter as PromCounter

from koprogo_gateway.adapters.rate_limit_store import (
    Counter,
    CounterConflictError,
    CounterStore,
    CounterStoreUnavailableError,
)
from koprogo_gateway.domain.errors import RateLimitUnavailableError
from koprogo_gateway.domain.rate_limit import (
    PolicyUsage,
    RateLimitDecision,
    RateLimitPolicy,
    admits,
    counter_key,
    seconds_until_reset,
    window_at,
)
from koprogo_gateway.service_layer.grouped_writes import GroupedWrites

log = logging.getLogger(__name__)

DECISIONS = PromCounter("koprogo_gateway_rate_limit_total", "Rate-limit decisions by outcome", ["outcome"])

# Subjects with the policy they are counted against, narrowest first (user, then copro).
Claims = Sequence[tuple[RateLimitPolicy, str]]


def _admitted(outcome: tuple[bool, int] | BaseException) -> bool:
    return not isinstance(outcome, BaseException) and outcome[0]


class _Contended(Exception):
    """The compare-and-set kept losing to other gateways (each waiter gets a 503 of its own)."""


class _StoreBackingOff(CounterStoreUnavailableError):
    """Refused without asking the store: it failed moments ago (the back-off is running)."""


@dataclass
class RateLimiter:
    store: CounterStore
    clock: Callable[[], float]
    # Let requests through when the store cannot be reached (RATE_LIMIT_FAIL_OPEN).
    fail_open: bool = False
    # Compare-and-set rounds lost to other gateways before giving up with a 503.
    max_attempts: int = 32
    # After the store failed to answer, how long requests are decided without asking it,
    # so that requests queued behind one key do not each wait for their own timeout.
    store_retry_s: float = 1.0
    _store_down_until: float = 0.0
    # Per key, the requests waiting for the next write (see the module's doc): each is its limit.
    _groups: GroupedWrites[str, int, tuple[bool, int]] = field(init=False)
    # The counter this gateway last read or wrote per key: a guess for the next write,
    # never a reason to refuse (a refusal always rests on a fresh read).
    _last_seen: dict[str, Counter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._groups = GroupedWrites(self._count_group, name="rate-limit")

    async def admit(self, claims: Claims) -> RateLimitDecision:
        """Count one request against every claim; admitted only if each policy had room.

        The claims are counted at once (a chat's user and copro: one write's wait instead of
        two in turn), unless one of their counters was last seen full: then in turn, narrowest
        first, so that a request its user's window refuses writes nothing (a user past the limit
        costs one read per request, not two writes and a give-back).
        Raises RateLimitUnavailableError when the store cannot decide (unless fail_open).
        """
        if not claims:
            return RateLimitDecision(admitted=True)
        now = self.clock()
        if len(self._last_seen) > 10_000:
            self._last_seen.clear()  # keys of past windows; only an optimisation is lost
        counted = []
        for policy, subject in claims:
            window = window_at(now, policy.window_s)
            counted.append((policy, counter_key(policy, subject, window), window))
        taken: list[str] = []
        usages: list[PolicyUsage] = []
        try:
            if len(counted) > 1 and not any(self._seen_full(key, policy.limit) for policy, key, _ in counted):
                outcomes = await asyncio.gather(
                    *(self._take(key, policy.limit) for policy, key, _ in counted), return_exceptions=True
                )
                taken = [key for (_, key, _), o in zip(counted, outcomes, strict=True) if _admitted(o)]
                failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
                if failed is not None:
                    raise failed
                results = [o for o in outcomes if not isinstance(o, BaseException)]
            else:
                results = []
                for policy, key, _ in counted:
                    results.append(await self._take(key, policy.limit))
                    if not results[-1][0]:
                        break
                    taken.append(key)
            for (policy, _, window), (_, used) in zip(counted, results, strict=False):
                usages.append(PolicyUsage(policy, used, seconds_until_reset(now, window)))
            if not all(admitted for admitted, _ in results):  # the loop stops at a refusal
                await self._give_back(taken)
                DECISIONS.labels(outcome="limited").inc()
                return RateLimitDecision(admitted=False, usages=tuple(usages))
        except RateLimitUnavailableError:
            await self._give_back(taken)
            raise
        except CounterStoreUnavailableError as exc:
            # The back-off is armed already, by the key's write (`_count_group`).
            await self._give_back(taken)
            if self.fail_open:
                DECISIONS.labels(outcome="store_unavailable_let_through").inc()
                return RateLimitDecision(admitted=True)
            DECISIONS.labels(outcome="store_unavailable").inc()
            raise RateLimitUnavailableError(
                "the rate-limit store cannot be reached, so the request is refused; retry shortly",
                headers={"Retry-After": "1"},
            ) from exc
        DECISIONS.labels(outcome="admitted").inc()
        return RateLimitDecision(admitted=True, usages=tuple(usages))

    def _seen_full(self, key: str, limit: int) -> bool:
        seen = self._last_seen.get(key)
        return seen is not None and not admits(seen.count, limit)

    async def _take(self, key: str, limit: int) -> tuple[bool, int]:
        """Increment `key` if it is below `limit`: (admitted, count in the window); joins the key's next write."""
        try:
            return await self._groups.submit(key, limit)
        except _Contended:
            DECISIONS.labels(outcome="contention").inc()
            raise RateLimitUnavailableError(
                f"the rate-limit counter stayed contended for {self.max_attempts} attempts; retry shortly",
                headers={"Retry-After": "1"},
            ) from None

    async def _count_group(self, key: str, limits: list[int]) -> list[tuple[bool, int]]:
        """Count a group of requests for `key` in one write (every request of a key has its limit)."""
        try:
            return await self._count(key, limits[0], len(limits))
        except _StoreBackingOff:
            raise
        except CounterStoreUnavailableError:
            # Armed before the next turn: the requests that arrived during this write are refused
            # at once instead of each waiting for the store's timeout. Only a failure of the store
            # itself arms it: a refusal decided during the back-off must not extend it, or steady
            # traffic keeps the store unasked.
            self._store_down_until = max(self._store_down_until, self.clock() + self.store_retry_s)
            raise

    async def _count(self, key: str, limit: int, wanted: int) -> list[tuple[bool, int]]:
        """Add up to `wanted` to `key`, never past `limit`, in one compare-and-set: each request's
        (admitted, count in the window), the admitted first."""
        self._check_store()
        guess = self._last_seen.get(key)
        for attempt in range(self.max_attempts):
            if guess is None or not admits(guess.count, limit):
                guess = await self.store.read(key)
                if guess is not None and not admits(guess.count, limit):
                    self._last_seen[key] = guess
                    return [(False, guess.count)] * wanted
            before = 0 if guess is None else guess.count
            taken = min(wanted, limit - before)
            try:
                if guess is None:
                    written = await self.store.create(key, taken)
                else:
                    written = await self.store.replace(key, before + taken, guess.revision)
            except CounterConflictError:
                guess = None
                # Another gateway wrote in between: read again after a short, jittered pause
                # so that gateways contending for one key do not keep colliding in step.
                await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 10)))
                continue
            self._last_seen[key] = written
            # Those past the room are refused on the count just written: the window is full.
            return [(True, before + i + 1) for i in range(taken)] + [(False, written.count)] * (
                wanted - taken
            )
        raise _Contended(key)

    async def _give_back(self, keys: list[str]) -> None:
        """Best effort: undo this request's increments; a failure only leaves them counted."""
        for key in keys:
            try:
                await self._decrement(key)
            except (CounterStoreUnavailableError, RateLimitUnavailableError):
                log.warning("could not give back a rate-limit slot; it stays counted until its window ends")

    def _check_store(self) -> None:
        if self.clock() < self._store_down_until:
            raise _StoreBackingOff("the store failed moments ago")

    async def _decrement(self, key: str) -> None:
        # Not held back by the store's back-off: the slot was counted moments ago, so the store
        # may well answer (a request refused by its copro's counter during the back-off).
        for _ in range(self.max_attempts):
            current = await self.store.read(key)
            if current is None or current.count == 0:
                return
            try:
                self._last_seen[key] = await self.store.replace(key, current.count - 1, current.revision)
                return
            except CounterConflictError:
                continue
        raise RateLimitUnavailableError("could not give back a rate-limit slot")
