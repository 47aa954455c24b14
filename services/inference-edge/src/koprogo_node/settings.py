"""Edge node settings.

Environment variables are the field names in upper case, as for every service:
NATS_URL, NATS_NKEY_SEED_FILE, OPS_HOST, OPS_PORT (the node port, 3031), NODE_ID, NODE_MODEL, NODE_MODEL_ID,
KOPROGO_MODELS_DIR (or MODELS_DIR), KEEP_ALIVE_S, GRID_ENABLED, GRID_URL, GRID_TASK_TYPES, MCP_ENABLED, POWER_WATTS, INTENSITY_G_PER_KWH, RENEWABLE_ATTESTED,
LLAMA_THREADS, LLAMA_N_CTX, HEARTBEAT_INTERVAL_S, ACK_WAIT_S, MAX_DELIVER, SHUTDOWN_GRACE_S,
NODE_COPROS (a JSON list).
The `koprogo-node` flags override them.
"""

from __future__ import annotations

import re
import socket
import uuid

from pydantic import Field, SecretStr, field_validator

from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.model_files import ModelsFolderSettings
from koprogo_shared.settings import EdgeFootprintSettings, ServiceSettings
from koprogo_shared.task_events import TASK_TYPES

DEFAULT_NODE_PORT = 3031


def default_node_id() -> str:
    """`<hostname>-<6 hex>`: readable on a dashboard, unique when two nodes share a host."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "node"
    return f"{host}-{uuid.uuid4().hex[:6]}"


class NodeSettings(ServiceSettings, ModelsFolderSettings, EdgeFootprintSettings):
    """What one edge node serves, how it runs llama.cpp and what it declares about its energy."""

    ops_port: int = DEFAULT_NODE_PORT  # /health, /ready, /metrics and /mcp/v1/models
    node_id: str = Field(default_factory=default_node_id, min_length=1)
    # A catalogue model id (resolved to <models_dir>/<file>) or a path to a .gguf file.
    node_model: str = BUNDLED_MODEL_ID
    # The id to serve a .gguf path under (ignored for the bundled model's default id).
    node_model_id: str | None = None
    # `models_dir` (KOPROGO_MODELS_DIR): where `models pull` writes and `-m <id>` looks, shared
    # with the `koprogo` CLI through ModelsFolderSettings.
    # A pulled model is unloaded after this many idle seconds and loaded again on the next
    # request (0: keep it loaded); the bundled model stays resident.
    keep_alive_s: float = Field(default=300.0, ge=0)
    # `--grid`: take grid tasks (service_layer/grid_worker.py) besides chats. `--grid-url`
    # (GRID_URL) also joins it, through that NATS server (default: NATS_URL).
    grid_enabled: bool = False
    grid_url: str | None = None
    # The task types this node runs (GRID_TASK_TYPES, a JSON list; default: every type).
    grid_task_types: list[str] = Field(default_factory=lambda: [str(t) for t in TASK_TYPES])
    # `--mcp`: the node's own MCP server at /mcp on the node port (entrypoints/mcp.py); callers
    # send NODE_MCP_TOKEN as a bearer token, required unless the port is on loopback.
    mcp_enabled: bool = False
    node_mcp_token: SecretStr | None = None
    # The copros whose own edge pool the node belongs to, as its NATS key was minted
    # (`koprogo nats-node-key --copro C`): it takes their work only. Empty: the shared pool.
    node_copros: list[str] = Field(default_factory=list)
    llama_threads: int | None = Field(default=None, ge=1)
    # 2048 keeps the KV cache small on a Pi; a bigger model or longer chats may want more.
    llama_n_ctx: int = Field(default=2048, ge=128)
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    # The work item goes back to another node this long after this node stops
    # answering for it (the worker extends it with in-progress acks while generating).
    ack_wait_s: float = Field(default=10.0, gt=0)
    max_deliver: int = Field(default=3, ge=1)
    # On SIGTERM, how long the in-flight answer may take before it is abandoned and NAKed.
    shutdown_grace_s: float = Field(default=10.0, ge=0)

    @field_validator("grid_task_types")
    @classmethod
    def _known_task_types(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in TASK_TYPES]
        if unknown:
            raise ValueError(f"unknown grid task types {unknown}: choose among {', '.join(TASK_TYPES)}")
        return list(dict.fromkeys(value))

    @property
    def joins_grid(self) -> bool:
        return self.grid_enabled or bool(self.grid_url)

    @property
    def pools(self) -> list[str]:
        """The edge pools it takes work from (`subjects.run_inference_edge`)."""
        return [subjects.copro_pool(c) for c in dict.fromkeys(self.node_copros)] or [subjects.SHARED_POOL]
