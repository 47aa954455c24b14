"""Benchmark: carbon-aware routing vs cloud-only, on one mixed workload, in one run.

    .venv/bin/python bench/carbon_routing.py [--requests 30] [--seed 7]

Starts the real stack (`koprogo_cli.stack.Stack`: embedded NATS and PostgreSQL, every
service its own process, one edge node with the bundled SmolLM2-135M) and a cloud
deployment that is a real OpenAI-compatible server (`python -m llama_cpp.server`, the same
bundled model served under the cloud name `gpt-4o-mini`, so "cloud" answers are real
answers with the provider's own token counts). Its CO₂ is counted by the cloud method
(1 Wh / 1000 tokens x 300 g/kWh, the seed's 0.3 g / 1000 tokens), the edge node's by its
declared 7 W x inference time x 150 g/kWh; see docs/co2-method.md.

The workload (the same requests, in the same order, for every mode):

* 60 % a resident's short question (about 20 prompt tokens),
* 25 % a summary of an excerpt of a general meeting's minutes (shared/fixtures, ~400 tokens),
* 15 % a question about a heating invoice (~80 tokens);
* 80 % of requests say `model: "auto"` (edge-capable), 20 % name the cloud model explicitly
  (an integrator that wants that model: no policy moves those to the edge);
* `max_tokens` 48, temperature 0, one request at a time, one edge node.

Modes: `prefer_edge` and `lowest_carbon` (the workload as it is), and `cloud-only` (every
request names `gpt-4o-mini`: what a gateway without edge routing does). Reported per mode:
Σ co2_grams from the responses, success rate, median and p95 latency seen by the caller.
Prints a Markdown table to paste into bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from koprogo_cli.dev_auth import DEMO_COPRO_ID
from koprogo_cli.ports import free_port
from koprogo_cli.stack import Stack
from koprogo_node.adapters.model_files import bundled_model_path
from koprogo_shared.catalogue import BUNDLED_MODEL_ID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.cloud_support import openai_compatible_server

CLOUD_MODEL = "gpt-4o-mini"
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
QUESTIONS = [
    "Quand a lieu la prochaine assemblée générale ?",
    "Comment contester une décision de l'assemblée ?",
    "Qui paie la réparation de la toiture ?",
    "Peut-on installer une borne de recharge dans le parking ?",
]
INVOICE = (
    "Facture F-2025-0142 de Chauffage Dubois SPRL, entretien de la chaudière collective, "
    "1 250,00 € HTVA, TVA 21 % 262,50 €, total 1 512,50 € TVAC, échéance 30/04/2025. "
    "Quelle part revient à un lot de 450 quotités sur 10 000 ?"
)


@dataclass
class Outcome:
    ok: bool
    latency_ms: float
    co2_grams: float
    execution_type: str | None


def minutes_excerpt() -> str:
    path = FIXTURES / "pv-ag-2025-les-tilleuls.txt"
    text = path.read_text(encoding="utf-8") if path.exists() else "Procès-verbal: budget approuvé."
    return "Résume ce procès-verbal en trois points :\n" + text[:1400]


def workload(n: int, seed: int) -> list[tuple[str, str]]:
    """(model, prompt) pairs: the mix documented above, drawn with a fixed seed."""
    rng = random.Random(seed)
    minutes = minutes_excerpt()
    requests = []
    for _ in range(n):
        kind = rng.random()
        prompt = rng.choice(QUESTIONS) if kind < 0.60 else minutes if kind < 0.85 else INVOICE
        model = "auto" if rng.random() < 0.80 else CLOUD_MODEL
        requests.append((model, prompt))
    return requests


def run(client: httpx.Client, requests: list[tuple[str, str]], policy: str | None) -> list[Outcome]:
    outcomes = []
    for model, prompt in requests:
        body: dict[str, Any] = {
            "model": CLOUD_MODEL if policy is None else model,
            "messages": [{"role": "user", "content": prompt}],
            "context": f"copro:{DEMO_COPRO_ID}",
            "max_tokens": 48,
            "temperature": 0.0,
        }
        if policy is not None:
            body["routing"] = {"policy": policy}
        started = time.perf_counter()
        response = client.post("/mcp/v1/chat", json=body)
        latency_ms = (time.perf_counter() - started) * 1000
        if response.status_code == 200:
            info = response.json()["execution_info"]
            outcomes.append(Outcome(True, latency_ms, info["co2_grams"], info["execution_type"]))
        else:
            print(
                f"# {policy or 'cloud-only'}: {response.status_code} {response.text[:200]}", file=sys.stderr
            )
            outcomes.append(Outcome(False, latency_ms, 0.0, None))
    return outcomes


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    os.environ.pop("NATS_URL", None)
    os.environ.pop("DATABASE_URL", None)
    work_dir = Path(tempfile.mkdtemp(prefix="koprogo-bench-carbon-"))
    with openai_compatible_server(bundled_model_path(), CLOUD_MODEL, work_dir) as port:
        deployments = work_dir / "deployments.toml"
        deployments.write_text(
            f"""[[deployments]]
id = "local-openai"
provider = "openai_compatible"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = ""
models = {{ "{CLOUD_MODEL}" = "{CLOUD_MODEL}" }}
timeout_s = 60
"""
        )
        os.environ["CLOUD_DEPLOYMENTS_FILE"] = str(deployments)
        stack = Stack(
            work_dir / "data",
            gateway_port=free_port(),
            node_port=free_port(),
            log=lambda line: print(f"# {line}", file=sys.stderr),
        )
        stack.start()
        try:
            stack.wait_for_model(BUNDLED_MODEL_ID)
            stack.wait_for_model(CLOUD_MODEL)
            client = httpx.Client(
                base_url=stack.gateway_url,
                timeout=180,
                headers={"Authorization": f"Bearer {stack.dev_token}"},
            )
            requests = workload(args.requests, args.seed)
            run(client, requests[:2], "prefer_edge")  # warm both paths
            run(client, requests[:2], None)
            results = {
                "prefer_edge": run(client, requests, "prefer_edge"),
                "lowest_carbon": run(client, requests, "lowest_carbon"),
                "cloud-only": run(client, requests, None),
            }
        finally:
            stack.stop()
    baseline = sum(o.co2_grams for o in results["cloud-only"])
    auto_share = sum(1 for m, _ in requests if m == "auto") / len(requests)
    print(f"{len(requests)} requests, {auto_share:.0%} `auto`, seed {args.seed}, 1 edge node\n")
    print("| mode | Σ CO₂ (g) | vs cloud-only | success | edge / cloud | median latency | p95 latency |")
    print("|---|---|---|---|---|---|---|")
    for mode, outcomes in results.items():
        grams = sum(o.co2_grams for o in outcomes)
        ok = [o for o in outcomes if o.ok]
        latencies = [o.latency_ms for o in ok] or [0.0]
        edge = sum(1 for o in ok if o.execution_type == "edge")
        cloud = sum(1 for o in ok if o.execution_type == "cloud")
        saving = f"{(1 - grams / baseline):.1%} less" if baseline and mode != "cloud-only" else "baseline"
        print(
            f"| {mode} | {grams:.4f} | {saving} | {len(ok)}/{len(outcomes)} | {edge} / {cloud} "
            f"| {statistics.median(latencies):.0f} ms | {p95(latencies):.0f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
