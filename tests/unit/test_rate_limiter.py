"""The rate limiter over the in-memory counter store: exact admission, give-backs, store outages."""

from __future__ import annotations

import asyncio

import pytest

from koprogo_gateway.adapters.rate_limit_store import Counter, CounterStoreUnavailableError, FakeCounterStore
from koprogo_gateway.domain.errors import RateLimitUnavailableError
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.service_layer.admission import chat_claims
from koprogo_gateway.service_layer.rate_limits import RateLimiter

COPRO = RateLimitPolicy("copro", 20, 60)
USER = RateLimitPolicy("user", 5, 60)


class Clock:
    def __init__(self, now: float = 1_000_040.0) -> None:  # 20 s into a window
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(store: FakeCounterStore, clock: Clock | None = None, **kwargs: object) -> RateLimiter:
    return RateLimiter(store=store, clock=clock or Clock(), **kwargs)  # type: ignore[arg-type]


async def test_the_limit_is_admitted_and_the_next_request_refused() -> None:
    gateway = limiter(FakeCounterStore())
    decisions = [await gateway.admit([(COPRO, "a")]) for _ in range(21)]
    assert [d.admitted for d in decisions] == [True] * 20 + [False]
    assert decisions[0].usages[0].remaining == 19
    assert decisions[19].usages[0].remaining == 0
    assert decisions[20].retry_after_s == 60 - 20  # the clock is 20 s into its window


async def test_two_gateways_on_one_store_under_a_concurrent_burst_admit_exactly_the_limit() -> None:
    store = FakeCounterStore()
    gateways = [limiter(store), limiter(store)]
    decisions = await asyncio.gather(*(gateways[i % 2].admit([(COPRO, "a")]) for i in range(60)))
    assert sum(d.admitted for d in decisions) == 20
    assert store.conflicts > 0  # the gateways did collide, and compare-and-set sorted it out
    assert next(iter(store.counters.values())).count == 20


class CountingStore(FakeCounterStore):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    async def create(self, key: str, count: int) -> Counter:
        self.writes += 1
        return await super().create(key, count)

    async def replace(self, key: str, count: int, revision: int) -> Counter:
        self.writes += 1
        return await super().replace(key, count, revision)


async def test_concurrent_requests_for_one_key_share_a_write_and_each_gets_its_own_count() -> None:
    store = CountingStore()
    gateway = limiter(store)
    decisions = await asyncio.gather(*(gateway.admit([(COPRO, "a")]) for _ in range(25)))
    admitted = [d for d in decisions if d.admitted]
    assert len(admitted) == 20
    # Each admitted request has its own place in the window, as if counted one by one.
    assert sorted(d.usages[0].remaining for d in admitted) == list(range(20))
    assert all(d.usages[0].remaining == 0 for d in decisions if not d.admitted)
    assert store.counters[next(iter(store.counters))].count == 20
    assert store.writes < 5  # one write counted many requests (25 one by one would be 20 writes)


async def test_a_request_whose_caller_left_before_its_turn_is_not_counted() -> None:
    store = CountingStore()
    gateway = limiter(store)
    first = asyncio.ensure_future(gateway.admit([(COPRO, "a")]))
    await asyncio.sleep(0)  # the first request's write is under way
    left = asyncio.ensure_future(gateway.admit([(COPRO, "a")]))
    await asyncio.sleep(0)
    left.cancel()
    assert (await first).admitted
    with pytest.raises(asyncio.CancelledError):
        await left
    assert (await gateway.admit([(COPRO, "a")])).usages[0].remaining == 18  # 2 counted, not 3


async def test_copros_and_windows_are_counted_apart() -> None:
    clock = Clock()
    gateway = limiter(FakeCounterStore(), clock)
    for _ in range(20):
        assert (await gateway.admit([(COPRO, "a")])).admitted
    assert not (await gateway.admit([(COPRO, "a")])).admitted
    assert (await gateway.admit([(COPRO, "b")])).admitted
    clock.now += 60
    assert (await gateway.admit([(COPRO, "a")])).admitted


async def test_a_request_refused_by_its_copro_gives_its_user_slot_back() -> None:
    store = FakeCounterStore()
    gateway = limiter(store)
    tight_copro = RateLimitPolicy("copro", 2, 60)
    claims = chat_claims(copro_policy=tight_copro, user_policy=USER, copro_id="a", user_id="u1")
    assert [(await gateway.admit(claims)).admitted for _ in range(3)] == [True, True, False]
    user_counts = [c.count for k, c in store.counters.items() if k.startswith("user.")]
    assert user_counts == [2]


async def test_requests_without_a_copro_share_one_counter() -> None:
    gateway = limiter(FakeCounterStore())
    claims = chat_claims(
        copro_policy=RateLimitPolicy("copro", 2, 60), user_policy=USER, copro_id=None, user_id=None
    )
    assert [(await gateway.admit(claims)).admitted for _ in range(3)] == [True, True, False]


async def test_no_user_today_means_only_the_copro_policy_applies() -> None:
    claims = chat_claims(copro_policy=COPRO, user_policy=USER, copro_id="a", user_id=None)
    assert claims == [(COPRO, "a")]
    claims = chat_claims(copro_policy=COPRO, user_policy=USER, copro_id="a", user_id="u1")
    assert claims == [(USER, "u1"), (COPRO, "a")]


async def test_an_unreachable_store_refuses_unless_configured_to_fail_open() -> None:
    store = FakeCounterStore()
    store.unavailable = True
    with pytest.raises(RateLimitUnavailableError) as refused:
        await limiter(store).admit([(COPRO, "a")])
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"] == "1"
    let_through = await limiter(store, fail_open=True).admit([(COPRO, "a")])
    assert let_through.admitted and let_through.usages == ()


class CoproCountersDown(FakeCounterStore):
    """The user's counter answers, the copro's does not."""

    async def read(self, key: str) -> Counter | None:
        if key.startswith("copro."):
            raise CounterStoreUnavailableError("down")
        return await super().read(key)


async def test_a_store_failing_mid_request_gives_back_the_slots_already_taken() -> None:
    store = CoproCountersDown()
    with pytest.raises(RateLimitUnavailableError):
        await limiter(store).admit([(USER, "u1"), (COPRO, "a")])
    assert [c.count for c in store.counters.values()] == [0]


class RivalAlwaysFirst(FakeCounterStore):
    """Another gateway writes the key just before every compare-and-set of ours."""

    async def replace(self, key: str, count: int, revision: int) -> Counter:
        self._store(key, self.counters[key].count)
        return await super().replace(key, count, revision)


async def test_endless_contention_is_a_503_not_an_extra_admission() -> None:
    store = RivalAlwaysFirst()
    gateway = limiter(store, max_attempts=3)
    assert (await gateway.admit([(COPRO, "a")])).admitted  # created: no rival on a create
    with pytest.raises(RateLimitUnavailableError):
        await gateway.admit([(COPRO, "a")])
    assert next(iter(store.counters.values())).count == 1


class SlowlyDown(FakeCounterStore):
    """A store that takes its time to fail, as a NATS server that stopped answering does."""

    calls = 0

    async def read(self, key: str) -> Counter | None:
        SlowlyDown.calls += 1
        await asyncio.sleep(0.05)
        raise CounterStoreUnavailableError("timeout")


async def test_requests_queued_behind_a_failing_store_fail_fast_then_the_store_is_tried_again() -> None:
    clock = Clock()
    gateway = limiter(SlowlyDown(), clock)
    results = await asyncio.gather(
        *(gateway.admit([(COPRO, "a")]) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, RateLimitUnavailableError) for r in results)
    assert SlowlyDown.calls == 1  # the other 19 did not each wait for a timeout of their own
    clock.now += 1.5
    with pytest.raises(RateLimitUnavailableError):
        await gateway.admit([(COPRO, "a")])
    assert SlowlyDown.calls == 2


async def test_requests_arriving_while_a_write_fails_are_refused_with_it_not_after_a_timeout_of_their_own() -> (
    None
):
    calls_before = SlowlyDown.calls
    gateway = limiter(SlowlyDown())
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.ensure_future(gateway.admit([(COPRO, "a")]))
    await asyncio.sleep(0.01)  # the first write is on its way (it fails after 0.05 s)
    later = [asyncio.ensure_future(gateway.admit([(COPRO, "a")])) for _ in range(10)]
    results = await asyncio.gather(first, *later, return_exceptions=True)
    assert all(isinstance(r, RateLimitUnavailableError) for r in results)
    assert SlowlyDown.calls - calls_before == 1  # the next turn found the back-off armed
    assert loop.time() - started < 0.09  # not a second timeout of 0.05 s


async def test_a_writer_cancelled_before_its_first_step_does_not_hang_its_key() -> None:
    gateway = limiter(FakeCounterStore())
    first = asyncio.ensure_future(gateway.admit([(COPRO, "a")]))
    await asyncio.sleep(0)  # the request waits in the key's queue; its writer has not run yet
    for writer in list(gateway._groups._writers):
        writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, timeout=1)
    decision = await asyncio.wait_for(gateway.admit([(COPRO, "a")]), timeout=1)
    assert decision.admitted and decision.usages[0].remaining == 19


async def test_steady_traffic_during_the_back_off_does_not_keep_the_store_unasked() -> None:
    # A refusal decided without the store (its back-off) must not re-arm the back-off: under
    # steady traffic the store was never asked again after NATS came back (tests/fault, NATS kill).
    clock = Clock()
    store = FakeCounterStore()
    gateway = limiter(store, clock)
    store.unavailable = True
    with pytest.raises(RateLimitUnavailableError):
        await gateway.admit([(COPRO, "a")])
    store.unavailable = False  # NATS is back
    for _ in range(9):  # a request every 0.2 s, inside and past the 1 s back-off
        clock.now += 0.2
        try:
            await gateway.admit([(COPRO, "a")])
        except RateLimitUnavailableError:
            continue
        break
    assert clock.now < 1_000_040.0 + 1.3, "admitted again once the back-off ran out"


class GatedStore(CountingStore):
    """Each write waits for `gate`; `most_at_once` is how many writes were ever on their way together."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.on_their_way = 0
        self.most_at_once = 0

    async def create(self, key: str, count: int) -> Counter:
        self.on_their_way += 1
        self.most_at_once = max(self.most_at_once, self.on_their_way)
        await self.gate.wait()
        self.on_their_way -= 1
        return await super().create(key, count)


async def test_a_chats_user_and_copro_counters_are_written_at_the_same_time() -> None:
    store = GatedStore()
    admitting = asyncio.ensure_future(limiter(store).admit([(USER, "u1"), (COPRO, "a")]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert store.most_at_once == 2  # in turn, the copro's write would wait for the user's
    store.gate.set()
    decision = await admitting
    assert decision.admitted
    assert [u.remaining for u in decision.usages] == [4, 19]


async def test_a_user_refused_elsewhere_gives_the_copro_slot_back() -> None:
    store = FakeCounterStore()
    other_gateway, gateway = limiter(store), limiter(store)
    for _ in range(5):  # the user's window filled through another gateway
        assert (await other_gateway.admit([(USER, "u1")])).admitted
    decision = await gateway.admit([(USER, "u1"), (COPRO, "a")])
    assert not decision.admitted
    assert [u.exhausted for u in decision.usages] == [True, False]
    copro_counts = [c.count for k, c in store.counters.items() if k.startswith("copro.")]
    assert sum(copro_counts) == 0  # counted at the same time as the user, then given back


async def test_a_user_seen_past_the_limit_costs_no_write_on_the_copro_counter() -> None:
    store = CountingStore()
    gateway = limiter(store)
    claims = [(USER, "u1"), (COPRO, "a")]
    assert all([(await gateway.admit(claims)).admitted for _ in range(5)])
    writes = store.writes
    refused = [await gateway.admit(claims) for _ in range(10)]
    assert not any(d.admitted for d in refused)
    assert store.writes == writes  # in turn, stopped at the user's full counter
    assert [u.policy.name for u in refused[0].usages] == ["user"]
    copro_counts = [c.count for k, c in store.counters.items() if k.startswith("copro.")]
    assert copro_counts == [5]
