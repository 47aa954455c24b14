"""Prometheus metrics of the node, served on /metrics.

Declared once per process (the registry is global), labelled by model so two nodes
in one process (tests) or several models later add up without clashing.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "koprogo_node_requests_total", "RunInference items handled, by outcome", ["model", "outcome"]
)
TOKENS = Counter(
    "koprogo_node_tokens_total", "Tokens processed, from the model's tokenizer", ["model", "kind"]
)
INFERENCE_SECONDS = Histogram(
    "koprogo_node_inference_seconds",
    "Wall time of one generation",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160),
)
GRID_ASSIGNMENTS_REFUSED = Counter(
    "koprogo_node_grid_assignments_refused_total",
    "Grid assignments not run because their signature checks failed (grid_signing.assignment_refusal), by reason",
    ["reason"],
)
