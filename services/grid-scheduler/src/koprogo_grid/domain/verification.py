"""Verification by redundancy: the policy a task gets, and when its replicas' results agree. Pure.

A task's policy is fixed when its first replica is handed out (docs/grid-trust.md): an untrusted
node's task needs `quorum` agreeing results from distinct owners ("quorum"); a trusted node's is
drawn for a spot check with probability `spot_check_rate` ("spot_check", the same rule) or taken
alone ("trusted"). The draw hashes the task id with the scheduler's secret salt (HMAC-SHA256), so
it is the same after a restart and a node cannot tell which of its tasks will be checked.

Results agree when their comparator keys (`domain/comparators.py`) are equal; a group counts its
distinct owners, so two nodes of one operator never make a quorum.

When the grid has fewer owners than the quorum (a stack with its bundled node alone, or the other
owners' nodes gone), `short_of_owners` says what a task waiting for another owner does: results
that all agree are accepted alone, unchecked (no trust earned, rewards held in escrow); results
that disagree wait for a new owner until the task expires, then fail `unverifiable`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Policy = Literal["quorum", "spot_check", "trusted"]
# What a task short of its quorum does when no other owner can run it (`short_of_owners`).
Shortfall = Literal["proceed", "accept_unchecked", "await_owner"]


def spot_check_drawn(task_id: str, salt: bytes, rate: float) -> bool:
    """Whether `task_id` is drawn for a spot check: a uniform draw in [0, 1) from HMAC(salt, id)."""
    if rate <= 0:
        return False
    mac = hmac.new(salt, task_id.encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") / 2**64 < rate


def policy_for(trusted: bool, drawn: bool) -> Policy:
    if not trusted:
        return "quorum"
    return "spot_check" if drawn else "trusted"


@dataclass(frozen=True, slots=True)
class Vote:
    """One replica's result as far as agreement goes."""

    attempt: int
    owner: str
    key: str


@dataclass(frozen=True, slots=True)
class Tally:
    """The largest group of agreeing results: its key, its distinct owners, and every result's count."""

    key: str | None
    owners: int
    results: int


def tally(votes: Iterable[Vote], prefer: str | None = None) -> Tally:
    """The group with the most distinct owners (ties: `prefer`'s, else the earliest result's)."""
    groups: dict[str, set[str]] = {}
    first: dict[str, int] = {}
    count = 0
    for vote in votes:
        count += 1
        groups.setdefault(vote.key, set()).add(vote.owner)
        first[vote.key] = min(first.get(vote.key, vote.attempt), vote.attempt)
    if not groups:
        return Tally(None, 0, 0)
    best = max(groups, key=lambda k: (len(groups[k]), k == prefer, -first[k]))
    return Tally(best, len(groups[best]), count)


def replicas_wanted(quorum: int, max_replicas: int, best_owners: int, results: int, running: int) -> int:
    """How many more replicas to hand out now: enough that, if all agree with the largest group,
    the quorum is reached, never more than `quorum` at once nor more results than `max_replicas`."""
    need = quorum - best_owners
    budget = max_replicas - results
    return max(0, min(need, budget) - running)


def reachable(quorum: int, max_replicas: int, best_owners: int, results: int) -> bool:
    """Whether a quorum can still be reached with the results not asked for yet."""
    return best_owners + (max_replicas - results) >= quorum


def groups(votes: Iterable[Vote]) -> int:
    """How many distinct results (agreement keys) there are."""
    return len({vote.key for vote in votes})


def short_of_owners(
    *, wanted: int, running: int, results: int, distinct: int, new_owners: int, waited_enough: bool
) -> Shortfall:
    """What a task that has not reached its quorum does, given the owners that could still run it.

    `wanted`: replicas it wants handed out now; `running`: its replicas still running; `results`
    and `distinct`: its results and how many distinct ones (`groups`); `new_owners`: owners not already on the
    task with a live node able to run it; `waited_enough`: the grace after it was queued passed
    (a second owner's node may not have announced itself yet).

    "proceed": the usual rule applies (no replica wanted, one still running, no result yet, an
    owner left to ask, or still within the grace); "accept_unchecked": every result agrees and no
    other owner exists: accepted alone, its replicas `unchecked`; "await_owner": the results
    disagree and no owner can break the tie: the task waits for one until it expires, then fails
    `unverifiable`.
    """
    if wanted <= 0 or running > 0 or results == 0 or new_owners > 0 or not waited_enough:
        return "proceed"
    return "accept_unchecked" if distinct == 1 else "await_owner"
