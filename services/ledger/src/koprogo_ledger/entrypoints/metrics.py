"""The ledger's Prometheus metrics (process-wide, served by the ops server's /metrics)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from koprogo_ledger.domain.rewards import FUND_ACCOUNT
from koprogo_shared.token_chain import MILLI

EVENTS = Counter(
    "koprogo_ledger_events_total",
    "Events handled by the ledger, by type and outcome (applied, duplicate, ignored).",
    ["type", "outcome"],
)
FAILURES = Counter(
    "koprogo_ledger_event_failures_total",
    "Attempts that failed: transient (NAK, retried), poison (dead-lettered), unavailable (PostgreSQL down, "
    "held), forged (an edge answer not from the node it names: dead-lettered), sourced_kind_refused (an event "
    "of a kind no building makes that reached the hub's stream by sourcing: dead-lettered).",
    ["kind"],
)
BATCH_SECONDS = Histogram(
    "koprogo_ledger_batch_seconds",
    "Time to project one fetched batch of events in one transaction, commit included.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BATCH_EVENTS = Histogram(
    "koprogo_ledger_batch_events",
    "Events projected per committed transaction.",
    buckets=(1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
CONTENTS_PURGED = Counter(
    "koprogo_ledger_contents_purged_total",
    "Rows whose message or response contents were purged after the retention window, by table.",
    ["table"],
)
PLAINTEXT_SEALED = Counter(
    "koprogo_ledger_plaintext_rows_sealed_total",
    "Rows written before contents were encrypted that the ledger has encrypted since, by table.",
    ["table"],
)
CONTENT_MAINTENANCE_RUNS = Counter(
    "koprogo_ledger_content_maintenance_runs_total",
    "Rounds of sealing and retention: done, skipped (another ledger held the lock) or failed (retried later).",
    ["outcome"],
)
CONTENT_MAINTENANCE_LAST_SUCCESS = Gauge(
    "koprogo_ledger_content_maintenance_last_success_timestamp_seconds",
    "When a round of sealing and retention last completed in this process (Unix time).",
)
UNDELIVERED_SETTLED = Counter(
    "koprogo_ledger_undelivered_answers_total",
    "Answers stored but handed to no caller by their request's deadline (a gateway stopped while its "
    "caller waited), settled as failed: not counted in the stats.",
)
STREAM_FILL = Gauge(
    "koprogo_stream_fill_ratio",
    "Bytes stored over max_bytes, per KOPROGO stream, read by the ledger every few seconds. At 1 the "
    "stream refuses new messages (discard: new: callers get 503 bus_full): alert well before "
    "(deploy/prometheus/alerts.yml fires at 0.8).",
    ["stream"],
)
LAG = Gauge(
    "koprogo_ledger_lag_messages",
    "Events stored but not yet projected: the ledger consumer's pending plus delivered-unacknowledged "
    "messages, read every few seconds",
)
LAST_APPLIED = Gauge(
    "koprogo_ledger_last_applied_timestamp_seconds",
    "When the ledger last committed a batch of projected events (Unix time)",
)
GRID_REWARDS = Counter(
    "koprogo_ledger_grid_rewards_tokens_total",
    "Tokens the grid's verified tasks earned, counted once committed to the token ledger, by the kind "
    "of account credited (node, escrow, solidarity_fund): rewards, the fund's share, CO2 credits",
    ["account"],
)

# The movements that earn (escrow releases and forfeits move tokens already earned).
_EARNING = frozenset({"reward", "fund_share", "co2_credit"})


def account_kind(account: str) -> str:
    """`node:<id>` -> node, `escrow:<id>` -> escrow, the fund -> solidarity_fund: never an id."""
    return "solidarity_fund" if account == FUND_ACCOUNT else account.split(":", 1)[0]


def count_committed(entries: Sequence[dict[str, Any]]) -> None:
    """After a projection commit: its time, and the tokens its token ledger rows earned."""
    LAST_APPLIED.set(time.time())
    for row in entries:
        if row["kind"] in _EARNING:
            GRID_REWARDS.labels(account_kind(row["credit"])).inc(row["amount_mt"] / MILLI)
