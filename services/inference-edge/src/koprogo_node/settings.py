"""Edge node settings.

Environment variables are the field names in upper case, as for every service:
NATS_URL, NATS_NKEY_SEED_FILE, OPS_HOST, OPS_PORT (the node port, 3031), NODE_ID, NODE_MODEL, NODE_MODEL_ID,
KOPROGO_MODELS_DIR (or MODELS_DIR), KEEP_ALIVE_S, GRID_ENABLED, GRID_URL, GRID_TASK_TYPES, MCP_ENABLED, POWER_WATTS, INTENSITY_G_PER_KWH, RENEWABLE_ATTESTED,
LLAMA_THREADS, LLAMA_N_CTX, HEARTBEAT_INTERVAL_S, ACK_WAIT_S, MAX_DELIVER, SHUTDOWN_GRACE_S,
NODE_COPROS (a JSON list), TAKES_ROUTED_REQUESTS, ANSWERS_DIR; for the grid's trust (docs/grid-trust.md): GRID_SIGNING_SEED_FILE,
GRID_SCHEDULER_PUBLIC_KEY, ENERGY_SOURCE, SOLAR_SHARE, ENERGY_METER_FILE, DEVICE_CLASS.
The `koprogo-node` flags override them.
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.grid_signing import SignatureError, public_key_bytes
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
    # Take the chats a gateway routed to the node's pools, on the audit log, and say so in the
    # heartbeat (`NodeHeartbeat.takes_routed_requests`). False: the router's work items only, and
    # no new heartbeat field (for a hub older than 0c913dd, whose services refuse a heartbeat
    # with a field they do not know).
    takes_routed_requests: bool = True
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
    # The grid identity signing this node's task reports (an nkey seed): NATS_NKEY_SEED_FILE when
    # set (its NATS identity); else this file, minted on first start (mode 0600). Default:
    # `<models dir>/../grid-node-<node id>.nk`, one key per node id, so two nodes of one host
    # (sharing a models folder) never share an identity (`grid_seed_file`).
    grid_signing_seed_file: Path | None = None
    # Where the node records the answers it stored, so that a work item redelivered after its
    # answer was stored is answered from there, not generated again (`adapters/answers.py`).
    # Default: `<models dir>/../answers-<node id>` (`answers_directory`).
    answers_dir: Path | None = None
    # The scheduler's public key (`U...`; `koprogo up` passes it, `koprogo node join` prints it):
    # an assignment signed by any other key is not run. Unset: the key an assignment names is
    # believed (a stack without keys), the rest of it is still checked.
    grid_scheduler_public_key: str | None = None
    # Proof of Green: where the node's electricity comes from ("grid", "solar", or "mixed" with
    # SOLAR_SHARE, the part of it its own panels supply), and what the attempts used:
    # ENERGY_METER_FILE names a file holding a cumulative Wh counter (a smart plug's exporter
    # writes it), read before and after each attempt; unset, POWER_WATTS x the seconds it ran.
    energy_source: Literal["grid", "solar", "mixed"] = "grid"
    solar_share: float | None = Field(default=None, ge=0, le=1)
    energy_meter_file: Path | None = None
    # The node's hardware class ("pi4", "pi5", "x86"...): the scheduler knows each class's limits.
    device_class: str = Field(default="pi5", min_length=1, max_length=64)

    @field_validator("grid_task_types")
    @classmethod
    def _known_task_types(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in TASK_TYPES]
        if unknown:
            raise ValueError(f"unknown grid task types {unknown}: choose among {', '.join(TASK_TYPES)}")
        return list(dict.fromkeys(value))

    @field_validator(
        "grid_signing_seed_file",
        "energy_meter_file",
        "grid_scheduler_public_key",
        "solar_share",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("grid_scheduler_public_key")
    @classmethod
    def _a_user_nkey(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                public_key_bytes(value)
            except SignatureError as exc:
                raise ValueError(
                    f"GRID_SCHEDULER_PUBLIC_KEY must be the scheduler's user nkey (U...): {exc}"
                ) from None
        return value

    @model_validator(mode="after")
    def _solar_share_fits_the_source(self) -> NodeSettings:
        share, source = self.solar_share, self.energy_source
        if source == "mixed" and share is None:
            raise ValueError(
                "ENERGY_SOURCE=mixed needs SOLAR_SHARE (the part of the energy from the node's own panels, 0-1)"
            )
        if source == "solar" and share not in (None, 1):
            raise ValueError(f"ENERGY_SOURCE=solar means SOLAR_SHARE 1, not {share}: use ENERGY_SOURCE=mixed")
        if source == "grid" and share not in (None, 0):
            raise ValueError(f"ENERGY_SOURCE=grid means SOLAR_SHARE 0, not {share}: use ENERGY_SOURCE=mixed")
        return self

    @property
    def attested_solar_share(self) -> float:
        """The part of its energy the node attests came from its own solar supply."""
        if self.energy_source == "solar":
            return 1.0
        if self.energy_source == "grid":
            return 0.0
        return float(self.solar_share or 0.0)

    def grid_seed_file(self) -> Path:
        """Where the node's own grid seed is (minted there when missing), without NATS keys."""
        if self.grid_signing_seed_file is not None:
            return self.grid_signing_seed_file
        safe_id = re.sub(r"[^A-Za-z0-9_-]", "-", self.node_id)
        return self.models_dir.expanduser().parent / f"grid-node-{safe_id}.nk"

    def answers_directory(self) -> Path:
        """Where the node records the answers it stored (ANSWERS_DIR, else beside the models folder)."""
        if self.answers_dir is not None:
            return self.answers_dir.expanduser()
        safe_id = re.sub(r"[^A-Za-z0-9_-]", "-", self.node_id)
        return self.models_dir.expanduser().parent / f"answers-{safe_id}"

    @property
    def joins_grid(self) -> bool:
        return self.grid_enabled or bool(self.grid_url)

    @property
    def pools(self) -> list[str]:
        """The edge pools it takes work from (`subjects.run_inference_edge`)."""
        return [subjects.copro_pool(c) for c in dict.fromkeys(self.node_copros)] or [subjects.SHARED_POOL]
