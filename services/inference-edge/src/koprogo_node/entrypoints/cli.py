"""`koprogo-node`: run an edge node (llama.cpp) that takes work from NATS.

`koprogo-node models pull|list|rm` manages the GGUF files (entrypoints.models_cli).

Flags override the environment (see koprogo_node.settings), which overrides the defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from koprogo_node.bootstrap import run_node
from koprogo_node.domain.errors import NodeError
from koprogo_node.settings import DEFAULT_NODE_PORT, NodeSettings
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.logging_setup import configure_logging
from koprogo_shared.service_runtime import run_until_signalled
from koprogo_shared.telemetry import configure_tracing

log = logging.getLogger(__name__)

# argparse destination -> NodeSettings field.
_FIELDS = {
    "port": "ops_port",
    "host": "ops_host",
    "model": "node_model",
    "model_id": "node_model_id",
    "models_dir": "models_dir",
    "grid_url": "grid_url",
    "grid": "grid_enabled",
    "grid_tasks": "grid_task_types",
    "mcp": "mcp_enabled",
    "nats_url": "nats_url",
    "nats_nkey_seed_file": "nats_nkey_seed_file",
    "node_id": "node_id",
    "copro": "node_copros",
    "power_watts": "power_watts",
    "intensity": "intensity_g_per_kwh",
    "renewable": "renewable_attested",
    "grid_scheduler_key": "grid_scheduler_public_key",
    "grid_signing_seed_file": "grid_signing_seed_file",
    "energy_source": "energy_source",
    "solar_share": "solar_share",
    "energy_meter_file": "energy_meter_file",
    "device_class": "device_class",
    "threads": "llama_threads",
    "n_ctx": "llama_n_ctx",
    "keep_alive": "keep_alive_s",
    "log_level": "log_level",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="koprogo-node",
        description="KoproGo Symbiose edge node: serves a GGUF model with llama.cpp, taking work from NATS. "
        "`koprogo-node models pull|list|rm` downloads and manages models (see `koprogo-node models -h`).",
    )
    p.add_argument(
        "-p",
        "--port",
        type=int,
        help=f"HTTP port for /health, /ready, /metrics, /mcp/v1/models "
        f"(default {DEFAULT_NODE_PORT}; 0 disables it)",
    )
    p.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument(
        "-m",
        "--model",
        help=f"a catalogue model id (its file is <models-dir>/<id>.gguf, with "
        f"':' as '-') or a path to a .gguf file (default: the bundled {BUNDLED_MODEL_ID})",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        help="where model ids are looked up (default: $KOPROGO_MODELS_DIR, else "
        "~/.local/share/koprogo/models); nothing is downloaded here: see `koprogo-node models pull`",
    )
    p.add_argument("--model-id", help="the model id to serve a .gguf path under (default: the file name)")
    p.add_argument(
        "--grid",
        action="store_true",
        default=None,
        help="join the grid: run grid tasks (invoice OCR, translation, minutes summaries, expense "
        "forecasts) handed out by the scheduler, besides chats",
    )
    p.add_argument(
        "-g",
        "--grid-url",
        help="join the grid through this NATS server (nats://host:4222; default: --nats-url); implies --grid",
    )
    p.add_argument(
        "--grid-tasks",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        help="the grid task types this node runs, comma-separated (default: all: "
        "ocr_invoice,translate_document,summarize_meeting,predict_expenses)",
    )
    p.add_argument(
        "--mcp",
        action="store_true",
        default=None,
        help="serve the node's own MCP tools (chat, node_status) at /mcp on the node port; "
        "set NODE_MCP_TOKEN to require it as a bearer token (required off loopback)",
    )
    p.add_argument("--nats-url", help="NATS server (default: $NATS_URL or nats://127.0.0.1:4222)")
    p.add_argument(
        "--nats-nkey-seed-file",
        type=Path,
        help="this node's NATS nkey seed (from `koprogo nats-node-key`; default: $NATS_NKEY_SEED_FILE, "
        "else no credentials)",
    )
    p.add_argument("--node-id", help="this node's id (default: <hostname>-<random>)")
    p.add_argument(
        "--copro",
        action="append",
        help="a copro whose own pool this node belongs to, as its key was minted (repeatable; "
        "default: $NODE_COPROS, else the shared pool)",
    )
    p.add_argument("--power-watts", type=float, help="the node's power draw under load, W (default 7)")
    p.add_argument(
        "--intensity", type=float, help="carbon intensity of its electricity, g CO2e/kWh (default 150)"
    )
    p.add_argument(
        "--renewable",
        action="store_true",
        default=None,
        help="attest a renewable supply: the node then reports 0 g CO2",
    )
    p.add_argument(
        "--grid-scheduler-key",
        help="the grid scheduler's public key (U...; `koprogo node join` prints it): assignments "
        "signed by another key are not run (default: $GRID_SCHEDULER_PUBLIC_KEY)",
    )
    p.add_argument(
        "--grid-signing-seed-file",
        type=Path,
        help="the nkey seed signing this node's grid reports when it has no NATS key; minted there on "
        "first start (default: <models-dir>/../grid-node-<node id>.nk)",
    )
    p.add_argument(
        "--energy-source",
        choices=["grid", "solar", "mixed"],
        help="where the node's electricity comes from, attested with each grid result (default grid)",
    )
    p.add_argument(
        "--solar-share",
        type=float,
        help="with --energy-source mixed: the part (0-1) of its energy its own panels supply",
    )
    p.add_argument(
        "--energy-meter-file",
        type=Path,
        help="a file holding the node's cumulative Wh counter (a smart plug exporter writes it), "
        "read before and after each grid task (default: declared power x time)",
    )
    p.add_argument("--device-class", help="the node's hardware class: pi4, pi5, x86... (default pi5)")
    p.add_argument("--threads", type=int, help="llama.cpp threads (default: half the CPUs)")
    p.add_argument("--n-ctx", type=int, help="context size in tokens, prompt plus answer (default 2048)")
    p.add_argument(
        "--keep-alive",
        type=float,
        help="seconds a pulled model stays loaded while idle; it loads again on the next request "
        "(default 300; 0 keeps it loaded; the bundled model always stays loaded)",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING... (default INFO)")
    return p


def settings_from_args(argv: list[str] | None = None) -> NodeSettings:
    """NodeSettings from the environment, with the flags that were given on top."""
    args = vars(build_parser().parse_args(argv))
    overrides: dict[str, Any] = {_FIELDS[k]: v for k, v in args.items() if v is not None}
    return NodeSettings(**overrides)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["models"]:
        from koprogo_node.entrypoints.models_cli import models_main

        sys.exit(models_main(argv[1:]))
    settings = settings_from_args(argv)
    configure_logging(settings.log_level, "node")
    configure_tracing("koprogo-node")
    try:
        run_until_signalled(lambda stop: run_node(settings, stop))
    except NodeError as exc:
        print(f"koprogo-node: {exc}", file=sys.stderr)
        sys.exit(2)
