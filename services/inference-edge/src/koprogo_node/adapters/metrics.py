"""Prometheus metrics of the node, served on /metrics.

Declared once per process (the registry is global), labelled by model so two nodes
in one process (tests) or several models later add up without clashing. The gauges are read
at scrape time (`set_function`): the generation path only observes its two histograms.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
TIME_TO_FIRST_TOKEN = Histogram(
    "koprogo_node_time_to_first_token_seconds",
    "From the node starting a chat (waiting for its engine, and loading the model, included) to "
    "its first generated token: the prompt's evaluation",
    ["model"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
GENERATION_TOKENS_PER_SECOND = Histogram(
    "koprogo_node_generation_tokens_per_second",
    "Decoding speed of one answer: its tokens after the first over the time after the first",
    ["model"],
    buckets=(0.5, 1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128),
)
QUEUE_DEPTH = Gauge(
    "koprogo_node_queue_depth",
    "Generations the node holds now, running or waiting for its engine (chats and MCP tool calls)",
    ["model"],
)
MODEL_RESIDENT = Gauge(
    "koprogo_node_model_resident", "1 while the model is loaded in memory, 0 when unloaded", ["model"]
)
MODEL_LOAD_SECONDS = Histogram(
    "koprogo_node_model_load_seconds",
    "Time to load the model into memory (at start, and again after an idle unload)",
    ["model"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160),
)
GRID_ASSIGNMENTS_REFUSED = Counter(
    "koprogo_node_grid_assignments_refused_total",
    "Grid assignments not run because their signature checks failed (grid_signing.assignment_refusal), by reason",
    ["reason"],
)
