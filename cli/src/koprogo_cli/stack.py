"""`koprogo up`: the whole stack on one machine, each service its own process.

Embedded nats-server and PostgreSQL start unless NATS_URL / DATABASE_URL name servers;
then the ledger (it owns the migrations), the router, the cloud worker (its deployments
report "no API key" until one is set), the grid scheduler, the edge node with the bundled model
(which also joins the grid), one more edge
node per `--model` (a pulled model or a GGUF file), and the gateway, with authentication on
(a local signing secret and a dev token under <data>/secrets/, see dev_auth.py). The embedded
nats-server admits only the stack's own nkeys (minted once under <data>/secrets/nats/), each
service with its own key and permissions; the embedded PostgreSQL asks for a password
(generated once into <data>/secrets/postgres-password). Each service gets only the secrets it
uses: DATABASE_URL (with that password) the ledger and the gateway alone, the signing secret
the gateway alone and as a file (JWT_SECRET_FILE). Ctrl-C (or SIGTERM) stops everything in
reverse order. The data lives under the data folder, so a restart keeps it.

On the grid (docs/grid-trust.md) the scheduler signs assignments with the grid identity's seed
(`NATS_NKEY_SEED_FILE`, and `GRID_SIGNING_SEED_FILE` naming the same file, also with a NATS_URL
server and no keys), and every node the stack starts is told its public key
(`GRID_SCHEDULER_PUBLIC_KEY`). The stack's own nodes are in the roster with owner `local` (they
never make a quorum together) and the device declared in the environment: `DEVICE_CLASS`,
`IDLE_WATTS`, `LATITUDE`, `LONGITUDE` (`DeviceProfile`'s defaults where unset: class `unknown`,
which the plausibility checks hold to generous limits); the nodes are given the same.

Its parts: the NATS side and the site in `stack_nats`, the keys handed to the services in
`stack_keys`, the settings read from the environment (and `StackError`) in `stack_settings`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from koprogo_cli.dev_auth import DevAuthError, ensure_jwt_secret, operator_verifier_env, write_dev_token
from koprogo_cli.embedded import EmbeddedServerError, tails_of
from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.embedded_pg import EmbeddedPostgres
from koprogo_cli.instance import GATEWAY_PORT, StackRecord
from koprogo_cli.nats_keys import registered_buildings
from koprogo_cli.ports import free_port, preferred_port
from koprogo_cli.served_models import ServedModel
from koprogo_cli.stack_keys import content_keys_env, grid_signing_env
from koprogo_cli.stack_nats import OWN_NODES_OWNER, StackNats
from koprogo_cli.stack_settings import (
    StackError,
    bundled_node_id,
    cloud_deployment_ids,
    nats_monitor_port,
    nats_prof_port,
    own_device,
)
from koprogo_shared import leaf_site
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.logging_setup import open_private_log
from koprogo_shared.node_roster import DeviceProfile

NODE_PORT = 3031
ROUTER_OPS_PORT = 8081
LEDGER_OPS_PORT = 8082
CLOUD_OPS_PORT = 8083
GRID_OPS_PORT = 8084
# Set in the environment of `koprogo up`, these reach only the services that use them (added
# back by name below), never every process the stack starts.
SCOPED_ENV = ("DATABASE_URL", "JWT_SECRET", "JWT_SECRET_FILE", "JWKS_URL", "AUTH_DISABLED")


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    proc: subprocess.Popen[bytes] | None = None
    # Background work (the ledger's projection) yields the CPU to the request path:
    # on a 2-core Pi the chat's hops would otherwise queue behind PostgreSQL commits.
    niceness: int = 0
    ready_timeout: float = 120.0


@dataclass
class Stack(StackNats):
    data_dir: Path
    gateway_port: int = GATEWAY_PORT
    node_port: int = NODE_PORT
    log: Callable[[str], None] = print
    # `koprogo up --model`: each served by an edge node of its own, beside the bundled one.
    models: list[ServedModel] = field(default_factory=list)
    # Told what runs so far (pids, servers first; NATS; nodes), to stop them if we die.
    on_processes: Callable[[StackRecord], None] | None = None
    # `koprogo up --lan`: the embedded NATS listens on every interface, for other machines' nodes.
    lan: bool = False
    # Given to every service besides (`koprogo up --traces`: the OTLP exporter's OTEL_* variables).
    service_env: dict[str, str] = field(default_factory=dict)
    # `koprogo up --site building --hub URL`: this folder is a copro's building (`koprogo building
    # add` made it at the hub), whose nats-server is a leaf node of the hub's (docs/building-offline.md).
    hub_urls: list[str] = field(default_factory=list)
    # A hub's leaf listener for its buildings (`--leaf-port`; on at 7422 once one is registered).
    leaf_port: int | None = None
    # The copro this stack's building serves (its folder's site file), None for a hub.
    building: str | None = field(default=None, init=False)
    nats: EmbeddedNats | None = field(default=None, init=False)
    postgres: EmbeddedPostgres | None = field(default=None, init=False)
    services: list[Service] = field(default_factory=list, init=False)
    # Identity -> nkey seed file, for the embedded nats-server only (empty with NATS_URL).
    nats_seed_files: dict[str, Path] = field(default_factory=dict, init=False)
    node_id: str = field(default_factory=bundled_node_id, init=False)
    # The token `koprogo up` minted for the demo copro (None when the operator set a verifier).
    dev_token: str | None = field(default=None, init=False)
    # The cloud worker's deployments (CLOUD_DEPLOYMENTS_FILE or the defaults), read at start.
    cloud_deployments: list[str] = field(default_factory=list, init=False)
    # The device its own nodes are declared with (`own_device`), read at start.
    device: DeviceProfile = field(default_factory=DeviceProfile, init=False)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self) -> None:
        self.cloud_deployments = cloud_deployment_ids()
        self.device = own_device()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secrets_dir = self.data_dir / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        secrets_dir.chmod(0o700)  # also a folder an earlier version made with the default mode
        verifier = self._verifier()
        self.building = self._site()
        nats_url = os.environ.get("NATS_URL") or self._start_nats()
        self._declare_streams(nats_url)
        self._source_buildings(nats_url)
        if os.environ.get("NATS_URL"):
            # The embedded server fsyncs every write (its configuration is ours); another is checked.
            self._check_durability(nats_url)
        database = {"DATABASE_URL": os.environ.get("DATABASE_URL") or self._start_postgres()}
        self._processes_changed()
        base_env = {
            **{name: value for name, value in os.environ.items() if name not in SCOPED_ENV},
            "NATS_URL": nats_url,
            # Names the stack a process belongs to (`koprogo down` finds a killed stack's leftovers by it).
            "KOPROGO_DATA_DIR": str(self.data_dir),
            **self.service_env,
        }
        if self.building is not None:
            # Replies under the building's root: the hub answers its cloud work there alone.
            base_env["NATS_INBOX_ROOT"] = leaf_site.building_inbox_root(self.building)
        content_keys = content_keys_env(self.data_dir)
        grid_scheduler_key, node_grid_env = grid_signing_env(self.data_dir, self.device)
        if self.building is None:  # a building's chats are projected at the hub
            self._launch_ledger(base_env, database, content_keys)
        self._launch(
            Service(
                "router",
                [_script("koprogo-router")],
                {
                    **base_env,
                    **self._nats_identity("router"),
                    "OPS_PORT": str(preferred_port(ROUTER_OPS_PORT)),
                },
                "",
            )
        )
        if self.building is None:  # a building's cloud chats are the hub's cloud workers'
            self._launch_hub_services(base_env, grid_scheduler_key)
        self._launch(
            Service(
                "edge-node",
                # The bundled node also runs grid tasks (`--grid`): OCR, translation, summaries,
                # forecasts; not in a building, which runs no grid scheduler.
                [_script("koprogo-node"), "--port", str(self.node_port)]
                + ([] if self.building else ["--grid"]),
                {
                    **base_env,
                    **self._nats_identity(f"node:{self.node_id}"),
                    **node_grid_env,
                    "NODE_ID": self.node_id,
                    "NODE_MODEL": BUNDLED_MODEL_ID,
                },
                f"http://127.0.0.1:{self.node_port}/ready",
            )
        )
        self._launch_models(base_env, node_grid_env)
        self._launch(
            Service(
                "gateway",
                [_script("koprogo-gateway")],
                {
                    # One machine's stack: its shared pool's nodes are its own, the gateway may hand
                    # them routed requests (user ids included); with `--lan`, other machines' nodes
                    # may join that pool: only the copros' own pools (settings.py says why).
                    "GATEWAY_ROUTES_EDGE_POOLS": "copro" if self.lan else "all",
                    **base_env,
                    **database,
                    **content_keys,
                    **verifier,
                    **self._nats_identity("gateway"),
                    "GATEWAY_PORT": str(self.gateway_port),
                    **self._site_env(),
                },
                f"{self.gateway_url}/ready",
            )
        )
        self._processes_changed()
        for service in self.services:
            self._wait_ready(service, service.ready_timeout)

    def _launch_ledger(
        self, base_env: dict[str, str], database: dict[str, str], content_keys: dict[str, str]
    ) -> None:
        # With buildings, a building's cloud answer may reach the ledger before its request (it
        # comes by sourcing): it waits for it as long as the hub keeps a building's inbox.
        buildings = registered_buildings(self.data_dir / "secrets" / "nats")
        waits = {"LEDGER_ORIGIN_WAIT_S": f"{leaf_site.INBOX_MAX_AGE_S:g}"} if buildings else {}
        self._launch(
            Service(
                "ledger",
                [_script("koprogo-ledger")],
                {
                    **base_env,
                    **database,
                    **content_keys,
                    **self._nats_identity("ledger"),
                    "OPS_PORT": str(preferred_port(LEDGER_OPS_PORT)),
                    **waits,
                },
                "",
                niceness=10,
            )
        )

    def _launch_hub_services(self, base_env: dict[str, str], grid_scheduler_key: dict[str, str]) -> None:
        """The cloud worker and the grid scheduler: a hub's (a building's chats reach them over the link)."""
        self._launch(
            Service(
                "cloud",
                [_script("koprogo-cloud")],
                {
                    **base_env,
                    **self._nats_identity("cloud"),
                    "OPS_PORT": str(preferred_port(CLOUD_OPS_PORT)),
                },
                "",
            )
        )
        self._launch(
            Service(
                "grid-scheduler",
                [_script("koprogo-grid-scheduler")],
                {
                    **base_env,
                    **self._nats_identity("grid"),
                    **grid_scheduler_key,
                    "OPS_PORT": str(preferred_port(GRID_OPS_PORT)),
                },
                "",
            )
        )

    def _launch_models(self, base_env: dict[str, str], node_grid_env: dict[str, str]) -> None:
        """One edge node per `--model`, beside the bundled one."""
        for model in self.models:
            port = free_port()
            self._launch(
                Service(
                    f"edge-node-{model.node_id}",
                    [_script("koprogo-node"), "--port", str(port)],
                    {
                        **base_env,
                        **self._nats_identity(f"node:{model.node_id}"),
                        **node_grid_env,
                        "NODE_ID": model.node_id,
                        "NODE_MODEL": str(model.path),
                        "NODE_MODEL_ID": model.model_id,
                    },
                    f"http://127.0.0.1:{port}/ready",
                    # A 5 GB model takes a while to map on a Pi's SD card.
                    ready_timeout=600.0,
                )
            )

    def pids(self) -> list[int]:
        """The processes this stack started, servers first, services in start order."""
        procs = [self.nats.proc if self.nats else None, self.postgres.proc if self.postgres else None]
        procs += [s.proc for s in self.services]
        return [p.pid for p in procs if p is not None]

    def own_nodes(self) -> dict[str, list[str]]:
        """The edge nodes this stack runs itself, with their models."""
        return {self.node_id: [BUNDLED_MODEL_ID], **{m.node_id: [m.model_id] for m in self.models}}

    def _processes_changed(self) -> None:
        if self.on_processes is not None:
            nats = self.nats
            self.on_processes(
                StackRecord(
                    os.getpid(),
                    self.gateway_url,
                    self.pids(),
                    nats_pid=nats.proc.pid if nats is not None and nats.proc is not None else 0,
                    nats_url=nats.url if nats is not None else os.environ.get("NATS_URL", ""),
                    lan=self.lan,
                    nodes=self.own_nodes(),
                    cloud_deployments=self.cloud_deployments,
                )
            )

    def _verifier(self) -> dict[str, str]:
        """The gateway's verifier settings: the operator's, or the stack's own secret (and a dev token)."""
        try:
            if operator := operator_verifier_env():
                if "JWKS_URL" in operator and not os.environ.get("JWKS_CACHE_FILE"):
                    # The last key set fetched, kept on disk: a building restarted while its line
                    # is down still verifies its members' tokens (JWKS_OFFLINE_MAX_AGE_S).
                    operator["JWKS_CACHE_FILE"] = str(self.data_dir / "secrets" / "jwks-cache.json")
                return operator  # an operator's verifier brings its own tokens
            local = ensure_jwt_secret(self.data_dir, environ={})
            self.dev_token = write_dev_token(self.data_dir)
        except DevAuthError as exc:
            raise StackError(f"authentication: {exc}") from None
        return local

    def _start_postgres(self) -> str:
        self.postgres = EmbeddedPostgres(
            self.data_dir / "postgres",
            port=preferred_port(5432),
            password_file=self.data_dir / "secrets" / "postgres-password",
        ).start()
        self.log(
            f"PostgreSQL (embedded, scram-sha-256, password in {self.postgres.secret_path}) "
            f"at {self.postgres.public_url}"
        )
        return self.postgres.url

    def _launch(self, service: Service) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        # The service logs through its own rotating handler (LOG_MAX_BYTES, LOG_BACKUP_COUNT
        # pass through); its raw output (a traceback, llama.cpp's prints) goes beside it.
        # Always one file per service, even when the operator's environment has a LOG_FILE.
        service.env = {**service.env, "LOG_FILE": str(logs / f"{service.name}.log")}
        with open_private_log(logs / f"{service.name}.stderr.log") as out:
            # Own session: a terminal's Ctrl-C reaches `koprogo up` alone, which then
            # stops the services in order (gateway first, ledger last, servers after).
            service.proc = subprocess.Popen(
                service.argv,
                env=service.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=(lambda n=service.niceness: os.nice(n)) if service.niceness else None,
            )
        if not service.ready_url:  # services whose only HTTP is the ops server
            service.ready_url = f"http://127.0.0.1:{service.env['OPS_PORT']}/ready"
        self.services.append(service)
        self._processes_changed()  # recorded at once: a stack killed while starting leaves nothing unnamed

    def _wait_ready(self, service: Service, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        logs = self.data_dir / "logs"
        # Its log, then its raw stderr (a traceback before logging was set up, llama.cpp's prints).
        service_logs = [logs / f"{service.name}.log", logs / f"{service.name}.stderr.log"]
        while time.monotonic() < deadline:
            assert service.proc is not None
            if service.proc.poll() is not None:
                raise StackError(
                    f"{service.name} exited with {service.proc.returncode}; {tails_of(service_logs)}"
                )
            try:
                if httpx.get(service.ready_url, timeout=1.0).status_code == 200:
                    self.log(f"{service.name} ready ({service.ready_url.rsplit('/', 1)[0]})")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise StackError(f"{service.name} not ready after {timeout}s; {tails_of(service_logs)}")

    def wait_for_model(self, model: str, timeout: float = 30.0) -> None:
        """Wait until the gateway sees a live node serving `model` (asked with the dev token)."""
        if self.dev_token is None:
            self.log("the operator's verifier is configured: not waiting for the model (no token here)")
            return
        headers = {"Authorization": f"Bearer {self.dev_token}"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.gateway_url}/mcp/v1/models", headers=headers, timeout=2.0)
            if response.status_code != 200:
                raise StackError(f"GET /mcp/v1/models answered {response.status_code}: {response.text[:200]}")
            if any(m["id"] == model and m["is_available"] for m in response.json()["models"]):
                return
            time.sleep(0.2)
        raise StackError(f"model {model} not available after {timeout}s")

    def stop(self) -> None:
        """Stop in dependency order, each before the next: gateway, node, router, ledger, then the servers."""
        for service in reversed(self.services):
            if service.proc and service.proc.poll() is None:
                service.proc.send_signal(signal.SIGTERM)
                try:
                    service.proc.wait(20)
                except subprocess.TimeoutExpired:
                    service.proc.kill()
                    service.proc.wait()
        if self.postgres:
            self.postgres.stop()
        if self.nats:
            self.nats.stop()

    def dead_services(self) -> list[str]:
        return [s.name for s in self.services if s.proc and s.proc.poll() is not None]


# Imported from here by the commands, the benchmarks and the tests.
__all__ = [
    "OWN_NODES_OWNER",
    "SCOPED_ENV",
    "EmbeddedServerError",
    "Service",
    "Stack",
    "StackError",
    "bundled_node_id",
    "cloud_deployment_ids",
    "nats_monitor_port",
    "nats_prof_port",
    "own_device",
]
