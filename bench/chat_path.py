"""Benchmark: the whole chat path vs llama-cpp-python called directly, in one run.

    .venv/bin/python bench/chat_path.py [--runs 30] [--long-runs 5]

Starts the real stack (embedded NATS and PostgreSQL, every service its own process, the
bundled SmolLM2-135M model) with `koprogo_cli.stack.Stack`, then, alternating so that
both sides see the same machine state:

* added latency: the same prompt with `max_tokens=1` through `POST /mcp/v1/chat` and
  straight through `Llama.create_chat_completion` (same model file, same settings);
  reported as the median of the per-pair differences.
* throughput: a prompt that makes a long answer with `max_tokens=128`, completion tokens
  per second of wall time on each side; reported as the ratio of medians.

Prints a Markdown table to paste into bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from llama_cpp import Llama

from koprogo_cli.dev_auth import DEMO_COPRO_ID
from koprogo_cli.embedded import free_port
from koprogo_cli.stack import Stack
from koprogo_node.adapters.model_files import bundled_model_path
from koprogo_shared.catalogue import BUNDLED_MODEL_ID

SHORT = "Bonjour, résume ce PV en une phrase."
# With temperature 0 this prompt runs to the 128-token cap on both sides (checked: finish "length").
LONG = "Explique en détail, étape par étape, comment se déroule une assemblée générale de copropriété."


def direct(llm: Llama, prompt: str, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0
    )
    return time.perf_counter() - started, int(out["usage"]["completion_tokens"])  # type: ignore[index]


def through_gateway(client: httpx.Client, prompt: str, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "context": f"copro:{DEMO_COPRO_ID}",  # the copro of the stack's dev token
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    started = time.perf_counter()
    response = client.post("/mcp/v1/chat", json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, int(response.json()["usage"]["completion_tokens"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--long-runs", type=int, default=5)
    args = parser.parse_args()
    os.environ.pop("NATS_URL", None)
    os.environ.pop("DATABASE_URL", None)
    stack = Stack(
        Path(tempfile.mkdtemp(prefix="koprogo-bench-")),
        gateway_port=free_port(),
        node_port=free_port(),
        log=lambda line: print(f"# {line}", file=sys.stderr),
    )
    stack.start()
    try:
        stack.wait_for_model(BUNDLED_MODEL_ID)
        llm = Llama(model_path=str(bundled_model_path()), n_ctx=2048, verbose=False)
        client = httpx.Client(
            base_url=stack.gateway_url, timeout=120, headers={"Authorization": f"Bearer {stack.dev_token}"}
        )
        for _ in range(3):  # warm both sides
            direct(llm, SHORT, 1)
            through_gateway(client, SHORT, 1)

        added_ms, path_ms, direct_ms = [], [], []
        for _ in range(args.runs):
            d, _ = direct(llm, SHORT, 1)
            p, _ = through_gateway(client, SHORT, 1)
            direct_ms.append(d * 1000)
            path_ms.append(p * 1000)
            added_ms.append((p - d) * 1000)

        direct_tps, path_tps, tokens = [], [], []
        for _ in range(args.long_runs):
            d, n_d = direct(llm, LONG, 128)
            p, n_p = through_gateway(client, LONG, 128)
            direct_tps.append(n_d / d)
            path_tps.append(n_p / p)
            tokens.append((n_d, n_p))
        ratio = statistics.median(path_tps) / statistics.median(direct_tps)

        print("| measure | direct llama-cpp-python | whole path | result |")
        print("|---|---|---|---|")
        print(
            f"| median latency, max_tokens=1 ({args.runs} pairs) | {statistics.median(direct_ms):.2f} ms "
            f"| {statistics.median(path_ms):.2f} ms | added {statistics.median(added_ms):.2f} ms (median of pair differences) |"
        )
        print(
            f"| tokens/s, max_tokens=128 ({args.long_runs} pairs; tokens direct/path {tokens}) "
            f"| {statistics.median(direct_tps):.1f} | {statistics.median(path_tps):.1f} | ratio {ratio:.3f} |"
        )
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
