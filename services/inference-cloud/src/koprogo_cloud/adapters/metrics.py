"""Prometheus metrics of the cloud worker, served on /metrics (labelled by deployment)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter("koprogo_cloud_provider_calls_total", "Provider calls, by outcome", ["deployment", "outcome"])
RETRIES = Counter("koprogo_cloud_retries_total", "Provider calls retried", ["deployment"])
FAILURES = Counter(
    "koprogo_cloud_failures_total", "Work items not answered, by error code", ["deployment", "error"]
)
COOLDOWNS = Counter("koprogo_cloud_cooldowns_total", "Cooldowns started", ["deployment"])
IN_COOLDOWN = Gauge("koprogo_cloud_in_cooldown", "1 while the deployment rests", ["deployment"])
TOKENS = Counter("koprogo_cloud_tokens_total", "Tokens, from the provider's usage", ["deployment", "kind"])
CALL_SECONDS = Histogram(
    "koprogo_cloud_call_seconds",
    "Wall time of one answered work item (retries included)",
    ["deployment"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160),
)
