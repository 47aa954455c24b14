"""Use case: answers no gateway handed to their caller are not answers (issue 12).

A gateway killed while its caller waits publishes no verdict: the node's answer is stored,
the caller's connection dropped. Past the request's deadline and a grace (for a late
ChatDelivered in flight), such an answer is settled as the request's failure, its figures kept
as `late_answer` (`records.NO_GATEWAY_DELIVERED_IT`), so the stats equal what callers got.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from koprogo_ledger.service_layer.ports import UndeliveredAnswers


async def settle_undelivered(
    answers: UndeliveredAnswers, *, now: datetime, grace_s: float, batch: int
) -> int:
    """Settle every undelivered answer whose deadline passed `grace_s` before `now`; how many."""
    before = now - timedelta(seconds=grace_s)
    total = 0
    while True:
        settled = await answers.settle(before, batch)
        total += settled
        if settled < batch:
            return total
