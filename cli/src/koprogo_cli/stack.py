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
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats.errors
from pydantic import ValidationError

from koprogo_cli.dev_auth import DevAuthError, ensure_jwt_secret, operator_verifier_env, write_dev_token
from koprogo_cli.embedded import EmbeddedServerError, tails_of
from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.embedded_pg import EmbeddedPostgres
from koprogo_cli.instance import GATEWAY_PORT, StackRecord
from koprogo_cli.nats_auth import identities, render_authorization
from koprogo_cli.nats_keys import (
    HUB_LEAF_SEED,
    building_of,
    grid_scheduler_public_key,
    joined_nodes,
    registered_buildings,
    roster_file,
)
from koprogo_cli.nats_permissions import ADMIN, GRID_SCHEDULER, NatsAuthError
from koprogo_cli.node_footprint import DEVICE_CLASS
from koprogo_cli.ports import free_port, preferred_port
from koprogo_cli.secrets import ensure_content_keyring
from koprogo_cli.served_models import ServedModel, host_label
from koprogo_shared import leaf_site
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.content_crypto import ContentKeyError
from koprogo_shared.deployments import DeploymentConfigError, DeploymentsFileSettings
from koprogo_shared.durability import DurabilityError, Finding
from koprogo_shared.durability import check as check_durability
from koprogo_shared.kv_buckets import rate_limit_window_from
from koprogo_shared.logging_setup import open_private_log
from koprogo_shared.nats_connection import NatsCredentialsError, connect_nats, declare_streams
from koprogo_shared.node_roster import DeviceProfile
from koprogo_shared.settings import EdgeFootprintSettings

NODE_PORT = 3031
ROUTER_OPS_PORT = 8081
LEDGER_OPS_PORT = 8082
CLOUD_OPS_PORT = 8083
GRID_OPS_PORT = 8084
# Set in the environment of `koprogo up`, these reach only the services that use them (added
# back by name below), never every process the stack starts.
SCOPED_ENV = ("DATABASE_URL", "JWT_SECRET", "JWT_SECRET_FILE", "JWKS_URL", "AUTH_DISABLED")
# The owner of the nodes a stack runs itself, in the roster: one operator, so never a quorum alone.
OWN_NODES_OWNER = "local"


class StackError(RuntimeError):
    """The stack could not start; the message says which part and where its log is."""


def nats_monitor_port(environ: Mapping[str, str]) -> int | None:
    """`NATS_MONITOR_PORT`: the embedded nats-server's monitoring port, on loopback; unset: none."""
    return _port_setting(environ, "NATS_MONITOR_PORT", 8222)


def nats_prof_port(environ: Mapping[str, str], *, lan: bool) -> int | None:
    """`NATS_PROF_PORT`: the embedded nats-server's Go profiler (`/debug/pprof/heap`...), for
    finding where its memory goes; unset: none. nats-server serves it on the clients' interface,
    so it is refused with `--lan` (every machine of the network could profile it)."""
    port = _port_setting(environ, "NATS_PROF_PORT", 6060)
    if port is not None and lan:
        raise StackError(
            "NATS_PROF_PORT is refused with --lan: nats-server would serve its profiler to the network"
        )
    return port


def _port_setting(environ: Mapping[str, str], name: str, example: int) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise StackError(f"{name} must be a port number (e.g. {example}), not {value!r}")
    return int(value)


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def cloud_deployment_ids() -> list[str]:
    """The cloud worker's deployments (CLOUD_DEPLOYMENTS_FILE or the defaults): its NATS subjects."""
    try:
        return [d.id for d in DeploymentsFileSettings().deployments()]
    except DeploymentConfigError as exc:
        raise StackError(f"cloud deployments: {exc}") from None


def own_device(environ: Mapping[str, str] | None = None) -> DeviceProfile:
    """The device the stack's own nodes are declared with: DEVICE_CLASS, IDLE_WATTS, LATITUDE and
    LONGITUDE, `DeviceProfile`'s defaults where unset."""
    env = os.environ if environ is None else environ
    default = DeviceProfile()
    device_class = env.get("DEVICE_CLASS") or default.device_class
    if not DEVICE_CLASS.match(device_class):
        raise StackError(f"DEVICE_CLASS {device_class!r}: use 1-64 letters, digits or '_.-'")
    try:
        idle = float(env["IDLE_WATTS"]) if env.get("IDLE_WATTS") else default.idle_watts
        lat = float(env["LATITUDE"]) if env.get("LATITUDE") else None
        lon = float(env["LONGITUDE"]) if env.get("LONGITUDE") else None
    except ValueError as exc:
        raise StackError(f"the edge nodes' device (IDLE_WATTS, LATITUDE, LONGITUDE): {exc}") from None
    if not idle >= 0:
        raise StackError("IDLE_WATTS must be a number >= 0")
    if (lat is None) != (lon is None) or (
        lat is not None and lon is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180)
    ):
        raise StackError("LATITUDE and LONGITUDE go together, within [-90, 90] and [-180, 180]")
    return DeviceProfile(device_class, idle, lat, lon)


def bundled_node_id() -> str:
    """The bundled node's id: $NODE_ID, or stable per host (its NATS permissions name it)."""
    if node_id := os.environ.get("NODE_ID"):
        return node_id
    return f"{host_label()}-bundled"


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
class Stack:
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
        content_keys = self._content_keys()
        grid_scheduler_key, node_grid_env = self._grid_signing()
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

    def _site_env(self) -> dict[str, str]:
        """A building's gateway: its id (the hub's cloud workers answer it on that subject) and
        where it reads its leaf link's state (/mcp/v1/site, the PWA's offline banner)."""
        if self.building is None:
            return {}
        assert self.nats is not None and self.nats.monitor_port is not None
        return {
            "GATEWAY_ID": leaf_site.building_gateway_id(self.building),
            "SITE": "building",
            "BUILDING_COPRO": self.building,
            "NATS_MONITOR_URL": f"http://127.0.0.1:{self.nats.monitor_port}",
        }

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

    def _site(self) -> str | None:
        """The copro of this folder's building (`--hub` given), None for a hub; StackError when the
        folder and the command line disagree."""
        keys_dir = self.data_dir / "secrets" / "nats"
        try:
            building = building_of(keys_dir)
        except NatsAuthError as exc:
            raise StackError(str(exc)) from None
        if self.hub_urls and building is None:
            raise StackError(
                f"{self.data_dir} is no building's folder: at the hub, `koprogo building add --copro ID "
                "--out FOLDER` makes one (its leaf key, content keys and signing secret); copy it here "
                "and start with `--data-dir FOLDER`"
            )
        if building is not None and not self.hub_urls:
            raise StackError(
                f"{self.data_dir} is copro {building}'s building: start it with `--site building --hub "
                "nats-leaf://HUB:7422`"
            )
        if building is not None and os.environ.get("NATS_URL"):
            raise StackError("a building runs its own nats-server (a leaf node of the hub's): unset NATS_URL")
        if building is not None:
            self.cloud_deployments = []  # served at the hub
        return building

    def _leafnodes(self, keys_dir: Path) -> tuple[str | None, str]:
        """The embedded server's JetStream domain and `leafnodes` block: a building's remote to
        the hub, a hub's listener once it has buildings (or `--leaf-port`), else neither."""
        if self.building is not None:
            seed_file = keys_dir / HUB_LEAF_SEED
            try:
                seed = seed_file.read_text().strip()
            except OSError as exc:
                raise StackError(f"the building's leaf key {seed_file}: {exc}") from None
            try:
                remote = leaf_site.render_leaf_remote(self.hub_urls, seed)
            except leaf_site.LeafSiteError as exc:
                raise StackError(str(exc)) from None
            return leaf_site.building_domain(self.building), remote
        if self.leaf_port is None and not registered_buildings(keys_dir):
            return None, ""
        port = self.leaf_port or preferred_port(leaf_site.DEFAULT_LEAF_PORT)
        self.leaf_port = port
        # Buildings connect from their own lines: every interface, each with its own nkey (and the
        # permissions `leaf_site.leaf_link_permissions` gives it); no TLS here (docs/deploy.md).
        return leaf_site.HUB_DOMAIN, leaf_site.render_hub_listener("0.0.0.0", port)

    def _source_buildings(self, nats_url: str) -> None:
        """At a hub, each registered building's events taken into KOPROGO_EVENTS (as the operator)."""
        buildings = registered_buildings(self.data_dir / "secrets" / "nats") if self.nats_seed_files else []
        if not buildings:
            return

        async def sourcing() -> None:
            nc, js = await connect_nats(
                nats_url, "koprogo-building-sources", nkey_seed_file=self.nats_seed_files[ADMIN]
            )
            try:
                for copro in buildings:
                    await leaf_site.source_building(js, copro)
            finally:
                await nc.close()

        try:
            asyncio.run(asyncio.wait_for(sourcing(), 60))
        except (TimeoutError, OSError, ValueError, nats.errors.Error) as exc:
            raise StackError(
                f"sourcing the buildings' events at {nats_url}: {exc or type(exc).__name__}"
            ) from None
        self.log(
            f"buildings: {', '.join(buildings)} (leaf listener on port {self.leaf_port}; their events "
            "reach KOPROGO_EVENTS through KOPROGO_BUILDING_<copro>)"
        )

    def _start_nats(self) -> str:
        try:
            keys_dir = self.data_dir / "secrets" / "nats"
            # Other machines' nodes `koprogo node join` admitted, then this stack's own.
            # Its own nodes run with this environment's POWER_WATTS, INTENSITY_G_PER_KWH and
            # RENEWABLE_ATTESTED: their keys are declared with the same, no better.
            # They are one operator's (owner `local`) and run on this machine (`own_device`).
            own_footprint = EdgeFootprintSettings().footprint()
            stack_identities = identities(
                keys_dir,
                {**joined_nodes(keys_dir), **self.own_nodes()},
                self.cloud_deployments,
                node_footprints={node_id: own_footprint for node_id in self.own_nodes()},
                node_owners={node_id: OWN_NODES_OWNER for node_id in self.own_nodes()},
                node_devices={node_id: self.device for node_id in self.own_nodes()},
            )
        except ValidationError as exc:
            raise StackError(
                f"the edge nodes' energy (POWER_WATTS, INTENSITY_G_PER_KWH, RENEWABLE_ATTESTED): {exc}"
            ) from None
        except NatsAuthError as exc:
            raise StackError(f"NATS identities: {exc}") from None
        self.nats_seed_files = stack_identities.seed_files
        port = preferred_port(4222)
        domain, leafnodes = self._leafnodes(keys_dir)
        self.nats = EmbeddedNats(
            self.data_dir / "nats",
            port=port,
            # Monitoring off unless NATS_MONITOR_PORT asks (then on loopback, for /varz and
            # prometheus-nats-exporter): it answers anyone on the machine with the list of connections.
            # A building's gateway reads its leaf link there (/leafz), so a building always has it.
            monitor_port=nats_monitor_port(os.environ) or (free_port() if self.building else None),
            prof_port=nats_prof_port(os.environ, lan=self.lan),
            authorization=render_authorization(stack_identities.users),
            host="0.0.0.0" if self.lan else "127.0.0.1",
            jetstream_domain=domain,
            leafnodes=leafnodes,
        ).start()
        self.log(
            f"nats-server (embedded, JetStream on, fsync always, {len(stack_identities.users)} nkey "
            f"identities in {self.data_dir / 'secrets' / 'nats'}) at {self.nats.url}"
            + (
                f", monitoring at http://127.0.0.1:{self.nats.monitor_port}/varz"
                if self.nats.monitor_port is not None
                else ""
            )
            + (
                f", profiler at http://127.0.0.1:{self.nats.prof_port}/debug/pprof/"
                if self.nats.prof_port is not None
                else ""
            )
        )
        return self.nats.url

    def _check_durability(self, nats_url: str) -> None:
        """Refuse (or warn about) a NATS_URL server that may lose acknowledged events (durability)."""

        async def checking() -> Finding:
            nc, js = await connect_nats(nats_url, "koprogo-durability-check")
            try:
                return await check_durability(js, os.environ)
            finally:
                await nc.close()

        try:
            finding = asyncio.run(asyncio.wait_for(checking(), 30))
        except (DurabilityError, ValueError) as exc:
            raise StackError(str(exc)) from None
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise StackError(f"checking the NATS server at {nats_url}: {exc or type(exc).__name__}") from None
        self.log(f"NATS durability: {finding.durability.value} ({finding.detail})")

    def _declare_streams(self, nats_url: str) -> None:
        """The embedded server's streams, declared as the operator (`admin`) before any service.

        The ledger and the router may not create or update streams (nats_permissions): they wait for
        these. With a server given by NATS_URL the services connect without keys and declare
        the streams themselves, as on any development server.
        """
        if not self.nats_seed_files:
            return
        try:
            # The counters' bucket is kept for the gateway's window (its own RATE_LIMIT_WINDOW_S).
            window = rate_limit_window_from(os.environ)
            asyncio.run(
                asyncio.wait_for(
                    declare_streams(
                        nats_url, nkey_seed_file=self.nats_seed_files[ADMIN], rate_limit_window_s=window
                    ),
                    60,
                )
            )
        except (NatsCredentialsError, TimeoutError, OSError, ValueError, nats.errors.Error) as exc:
            raise StackError(
                f"declaring the NATS streams at {nats_url}: {exc or type(exc).__name__}"
            ) from None
        self.log("NATS streams and buckets declared as the operator (admin); the services only look them up")

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

    def _content_keys(self) -> dict[str, str]:
        """The ledger's and the gateway's content keys: the operator's, or <data>/secrets/content-keys."""
        try:
            return ensure_content_keyring(self.data_dir)
        except ContentKeyError as exc:
            raise StackError(f"content keys: {exc}") from None

    def _grid_signing(self) -> tuple[dict[str, str], dict[str, str]]:
        """The scheduler's signing seed, and what every node the stack starts is told: the scheduler's
        public key (it runs only assignments signed with it) and its device class (its attestations')."""
        keys_dir = self.data_dir / "secrets" / "nats"
        try:
            public_key = grid_scheduler_public_key(keys_dir)
        except (OSError, NatsCredentialsError) as exc:
            raise StackError(f"the grid scheduler's signing key in {keys_dir}: {exc}") from None
        scheduler = {"GRID_SIGNING_SEED_FILE": str(keys_dir / f"{GRID_SCHEDULER}.nk")}
        nodes = {"GRID_SCHEDULER_PUBLIC_KEY": public_key, "DEVICE_CLASS": self.device.device_class}
        return scheduler, nodes

    def _nats_identity(self, name: str) -> dict[str, str]:
        """The environment that hands a service its own nkey (nothing for a server given by NATS_URL)."""
        if not self.nats_seed_files:
            return {}
        # The router checks each heartbeat against the node roster beside the keys (nats_keys).
        seed_file = self.nats_seed_files[name]
        return {"NATS_NKEY_SEED_FILE": str(seed_file), "NODE_ROSTER_FILE": str(roster_file(seed_file.parent))}

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


__all__ = ["EmbeddedServerError", "Stack", "StackError"]
