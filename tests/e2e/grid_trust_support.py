"""A real stack for the grid's trust (docs/grid-trust.md), every part its own OS process.

What `koprogo up` runs for the grid, on a nats-server of the test's own that admits only the
keys minted here (as `koprogo up` mints them: `koprogo_cli.nats_auth.identities`), with the node
roster holding each node's public key, owner and device, and a fresh PostgreSQL database:

* `koprogo-ledger` (the token ledger), `koprogo-grid-scheduler` (replicas, quorum, trust,
  signatures), `koprogo-gateway` (authentication off: every caller is an admin);
* honest nodes: `koprogo-node --grid` with the bundled model, each with its own key;
* cheating nodes: `tests/grid_cheaters.py`, a real node whose executors cheat (`lazy`, `wrong`,
  `replay`, `greenwash`), started the way the README tells an operator to start one.

Settings are small so a scenario runs in bounded time (trust after 2 valid results, fast task
types). `GridTrustStack.gateway` reads what a member would read: tasks, nodes, balances, the
solidarity fund and the ledger's verification.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.nats_auth import identities, render_authorization
from koprogo_cli.nats_keys import record_grant, roster_file
from koprogo_cli.nats_permissions import ADMIN
from koprogo_cli.ports import free_port
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.nats_connection import declare_streams, nkey_public_key
from koprogo_shared.node_roster import DeviceProfile, NodeGrant, parse_roster
from tests.conftest import TEST_CONTENT_KEYS
from tests.fault.stack_processes import ACK_WAIT_S, HEARTBEAT_INTERVAL_S, ServiceProcess, _base_env

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
CHEATERS = REPO / "tests" / "grid_cheaters.py"
COPRO = "7c1e5a2b-3d4f-4a6b-8c9d-0e1f2a3b4c5d"
FINAL = {"completed", "failed", "expired", "cancelled"}
# Only the fast task types: a forecast (statsmodels) and a short translation (the bundled model,
# greedy decoding, so two honest nodes give the same tokens; it has model tokens, so its task
# saves CO2 against the cloud and the fund gets a CO2 credit).
TASK_TYPES = "predict_expenses,translate_document"
# The trust settings every scenario starts from; each test overrides what it needs.
BASE_GRID_SETTINGS = {
    "GRID_TRUST_AFTER": "2",
    "GRID_QUORUM": "2",
    "GRID_MAX_REPLICAS": "4",
    "GRID_SPOT_CHECK_RATE": "1",
    "GRID_START_GRACE_S": "10",
    "GRID_DEADLINES": "predict_expenses=60,translate_document=90",
    "LEDGER_HEAD_INTERVAL_S": "1",
}
# An x86 box's declared idle draw and class; attestations are checked against them.
X86 = DeviceProfile(device_class="x86", idle_watts=1.0)


def night_place(now: datetime | None = None) -> tuple[float, float]:
    """A place on the equator where it is about local midnight now (the sun far below the horizon)."""
    moment = now or datetime.now(UTC)
    hours = moment.hour + moment.minute / 60
    longitude = (-15.0 * hours + 180.0) % 360.0 - 180.0
    return 0.0, round(longitude, 2)


@dataclass(frozen=True)
class NodeSpec:
    """One grid node of the test: its id, its operator (owner) and how it behaves.

    `behaviour` "honest" runs `koprogo-node --grid`; anything else is a mode of
    `tests/grid_cheaters.py` (lazy, wrong, replay, greenwash...). `env` is added to its environment.
    """

    node_id: str
    owner: str
    behaviour: str = "honest"
    device: DeviceProfile = X86
    env: Mapping[str, str] = field(default_factory=dict)
    args: Sequence[str] = ()


def honest(node_id: str, owner: str, **kw: Any) -> NodeSpec:
    return NodeSpec(node_id, owner, "honest", **kw)


def cheater(node_id: str, owner: str, mode: str, **kw: Any) -> NodeSpec:
    return NodeSpec(node_id, owner, mode, **kw)


@dataclass
class GridTrustStack:
    nats: EmbeddedNats
    database_url: str
    keys_dir: Path
    log_dir: Path
    gateway_url: str
    services: dict[str, ServiceProcess]
    nodes: dict[str, ServiceProcess]
    specs: dict[str, NodeSpec]
    client: httpx.AsyncClient
    seed_files: dict[str, Path]

    # ----- processes --------------------------------------------------------------------------

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.nodes.get(name) or self.services[name]

    async def start_nodes(self, *node_ids: str) -> None:
        """Start these nodes (all of them when none is named) and wait until each is ready."""
        chosen = [self.nodes[n] for n in (node_ids or self.nodes)]
        await asyncio.gather(*(p.start() for p in chosen if not p.running))
        await asyncio.gather(*(p.wait_ready() for p in chosen))
        await self.wait_heard(*(p.name for p in chosen))

    async def stop_nodes(self, *node_ids: str) -> None:
        await asyncio.gather(*(self.nodes[n].stop() for n in node_ids))

    async def replace_node(self, spec: NodeSpec, *, start: bool = True) -> None:
        """Stop the node of `spec.node_id`; it will run again (now when `start`), same id and key,
        as `spec` says (another behaviour, say)."""
        old = self.nodes[spec.node_id]
        await old.stop()
        fresh = _node_process(spec, self._node_env_base, old.log_dir, self.seed_files)
        fresh.starts = old.starts  # its logs continue the numbering
        self.nodes[spec.node_id] = fresh
        self.specs[spec.node_id] = spec
        if start:
            await self.start_nodes(spec.node_id)

    async def restart_scheduler(self, **settings: str) -> None:
        """Stop the grid scheduler (SIGTERM) and start it again with these settings changed."""
        scheduler = self.services["grid-scheduler"]
        await scheduler.stop()
        scheduler.env = scheduler.env | settings
        await scheduler.restart()

    async def stop(self) -> None:
        await self.client.aclose()
        # The nodes first (they poll the scheduler), then the services, then NATS.
        await asyncio.gather(*(p.stop() for p in self.nodes.values()), return_exceptions=True)
        await asyncio.gather(*(p.stop() for p in self.services.values()), return_exceptions=True)
        self.nats.stop()

    def logs(self, lines: int = 40) -> str:
        return "\n".join(p.logs(lines) for p in [*self.services.values(), *self.nodes.values()])

    @property
    def _node_env_base(self) -> dict[str, str]:
        return self.services["grid-scheduler"].env | {}

    # ----- the gateway's answers -----------------------------------------------------------------

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params or None)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    async def submit(self, task_type: str, input_data: Mapping[str, Any]) -> str:
        body = {"task_type": task_type, "input_data": dict(input_data), "copro_id": COPRO}
        response = await self.client.post("/mcp/v1/execute", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    async def task(self, task_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.get(f"/mcp/v1/tasks/{task_id}")
        return found

    async def finished(self, task_id: str, timeout: float = 90) -> dict[str, Any]:
        """The task once final, or an AssertionError with its state and the stack's logs."""
        deadline = time.monotonic() + timeout
        while True:
            task = await self.task(task_id)
            if task["status"] in FINAL:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"task {task_id} still {task['status']} after {timeout:g}s:\n"
                    f"{json.dumps(task, indent=1)[:4000]}\n{self.logs(25)}"
                )
            await asyncio.sleep(0.3)

    async def grid_nodes(self) -> dict[str, dict[str, Any]]:
        """GET /mcp/v1/grid/nodes, by node id."""
        body = await self.get("/mcp/v1/grid/nodes")
        listed = body["nodes"] if isinstance(body, dict) else body
        return {n["node_id"]: n for n in listed}

    async def balance(self, node_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.get(f"/mcp/v1/grid/nodes/{node_id}/balance")
        return found

    async def fund(self) -> dict[str, Any]:
        found: dict[str, Any] = await self.get("/mcp/v1/grid/solidarity-fund")
        return found

    async def verify(self) -> dict[str, Any]:
        found: dict[str, Any] = await self.get("/mcp/v1/grid/ledger/verify")
        return found

    async def wait_heard(self, *node_ids: str, timeout: float = 30) -> None:
        """Until the gateway hears each node's heartbeats (GET /mcp/v1/nodes), as the scheduler does."""
        deadline = time.monotonic() + timeout
        while True:
            response = await self.client.get("/mcp/v1/nodes")
            seen = (
                {n["node_id"] for n in response.json()["edge_nodes"]}
                if response.status_code == 200
                else set()
            )
            if set(node_ids) <= seen:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"nodes {sorted(set(node_ids) - seen)} not heard after {timeout:g}s "
                    f"(GET /mcp/v1/nodes: {response.status_code} {response.text[:300]})\n{self.logs(20)}"
                )
            await asyncio.sleep(0.3)

    async def wait_for(
        self, what: str, predicate: Any, timeout: float = 60, interval: float = 0.3, show: Any = None
    ) -> Any:
        """Poll an async predicate until it returns something truthy; fail naming `what`, with what
        `show()` (an async callable) sees then, or the nodes' standing when not given."""
        deadline = time.monotonic() + timeout
        while True:
            found = await predicate()
            if found:
                return found
            if time.monotonic() > deadline:
                seen = await (show or self._nodes_text)()
                raise AssertionError(f"{what}: not within {timeout:g}s; seen:\n{seen}\n{self.logs(25)}")
            await asyncio.sleep(interval)

    async def _nodes_text(self) -> str:
        response = await self.client.get("/mcp/v1/grid/nodes")
        return f"GET /mcp/v1/grid/nodes {response.status_code}: {response.text[:3000]}"

    async def settled_ledger(self, timeout: float = 30) -> dict[str, Any]:
        """The ledger's verification once it stops growing (the ledger has applied what it got):
        every scenario ends by asking it, through the gateway."""
        deadline = time.monotonic() + timeout
        previous: dict[str, Any] | None = None
        while True:
            report = await self.verify()
            if previous is not None and report.get("entries") == previous.get("entries"):
                return report
            if time.monotonic() > deadline:
                return report
            previous = report
            await asyncio.sleep(1.5)

    async def assert_ledger_balanced(self) -> dict[str, Any]:
        """GET /mcp/v1/grid/ledger/verify: the chain verifies and the accounts sum to zero."""
        report = await self.settled_ledger()
        assert report["ok"] is True, report
        assert report["balances_sum_tokens"] == 0, report
        assert report["broken_at"] is None, report
        return report


# ----- building the stack -------------------------------------------------------------------------


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _keyed(seed_file: Path, keys_dir: Path) -> dict[str, str]:
    return {"NATS_NKEY_SEED_FILE": str(seed_file), "NODE_ROSTER_FILE": str(roster_file(keys_dir))}


def mint_identities(keys_dir: Path, specs: Sequence[NodeSpec]) -> dict[str, Path]:
    """Every service's, the operator's and each node's nkey, as `koprogo up` mints them, and the
    roster entry of each node with its public key, owner and device (what `koprogo nats-node-key
    --owner ... --device-class ...` declares). Returns identity -> seed file."""
    found = identities(keys_dir, {s.node_id: [BUNDLED_MODEL_ID] for s in specs})
    grants = parse_roster(roster_file(keys_dir).read_text())
    for spec in specs:
        seed_file = found.seed_files[f"node:{spec.node_id}"]
        grant = grants[spec.node_id]
        record_grant(
            keys_dir,
            spec.node_id,
            NodeGrant(
                grant.models,
                grant.pools,
                grant.footprint,
                public_key=nkey_public_key(seed_file),
                owner=spec.owner,
                device=spec.device,
            ),
        )
    return {**found.seed_files, "_authorization": _write_authorization(keys_dir, found.users)}


def _write_authorization(keys_dir: Path, users: Any) -> Path:
    path = keys_dir / "authorization.conf"
    path.write_text(render_authorization(users))
    return path


def _node_process(
    spec: NodeSpec, scheduler_env: Mapping[str, str], log_dir: Path, seed_files: Mapping[str, Path]
) -> ServiceProcess:
    """A node's process: `koprogo-node --grid`, or the cheaters' program in `spec.behaviour`'s mode."""
    port = free_port()
    keys_dir = seed_files[ADMIN].parent
    env = (
        _base_env(scheduler_env["NATS_URL"])
        | _keyed(seed_files[f"node:{spec.node_id}"], keys_dir)
        | {
            "NODE_ID": spec.node_id,
            "NODE_MODEL": BUNDLED_MODEL_ID,
            "HEARTBEAT_INTERVAL_S": HEARTBEAT_INTERVAL_S,
            "ACK_WAIT_S": ACK_WAIT_S,
            "LLAMA_THREADS": "1",
            # The scheduler's key the node checks every assignment against (`koprogo up` passes it).
            "GRID_SCHEDULER_PUBLIC_KEY": nkey_public_key(seed_files["grid"]),
            "DEVICE_CLASS": spec.device.device_class,
            **spec.env,
        }
    )
    node_args = ["--port", str(port), "--node-id", spec.node_id, "--grid", "--grid-tasks", TASK_TYPES]
    if spec.behaviour == "honest":
        argv = [_script("koprogo-node"), *node_args, *spec.args]
    else:
        argv = [sys.executable, str(CHEATERS), spec.behaviour, *node_args, *spec.args]
    return ServiceProcess(spec.node_id, argv, env, f"http://127.0.0.1:{port}/ready", log_dir, 120.0)


async def start_grid_trust_stack(
    database_url: str,
    tmp_path: Path,
    specs: Sequence[NodeSpec],
    *,
    grid_settings: Mapping[str, str] | None = None,
    start_nodes: bool = True,
) -> GridTrustStack:
    """Mint the keys, start the keyed nats-server, declare the streams as the operator, start the
    ledger, the scheduler and the gateway, then (`start_nodes`) every node; all ready."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    seed_files = await asyncio.to_thread(mint_identities, keys_dir, specs)
    authorization = seed_files.pop("_authorization").read_text()
    nats_server = EmbeddedNats(tmp_path / "nats", port=free_port(), authorization=authorization)
    await asyncio.to_thread(nats_server.start)
    try:
        await asyncio.wait_for(declare_streams(nats_server.url, nkey_seed_file=seed_files[ADMIN]), 60)
        settings = BASE_GRID_SETTINGS | dict(grid_settings or {})
        base = _base_env(nats_server.url)
        services: dict[str, ServiceProcess] = {}

        def ops(name: str, identity: str, argv: list[str], env: Mapping[str, str]) -> None:
            port = free_port()
            services[name] = ServiceProcess(
                name,
                argv,
                base | _keyed(seed_files[identity], keys_dir) | dict(env) | {"OPS_PORT": str(port)},
                f"http://127.0.0.1:{port}/ready",
                log_dir,
            )

        ops(
            "ledger",
            "ledger",
            [_script("koprogo-ledger")],
            {"DATABASE_URL": database_url, **TEST_CONTENT_KEYS, "LEDGER_ACK_WAIT_S": ACK_WAIT_S, **settings},
        )
        ops("grid-scheduler", "grid", [_script("koprogo-grid-scheduler")], settings)
        gateway_port = free_port()
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        services["gateway"] = ServiceProcess(
            "gateway",
            [_script("koprogo-gateway")],
            base
            | _keyed(seed_files["gateway"], keys_dir)
            | {
                "DATABASE_URL": database_url,
                **TEST_CONTENT_KEYS,
                "AUTH_DISABLED": "true",
                "GATEWAY_PORT": str(gateway_port),
                **settings,
            },
            f"{gateway_url}/ready",
            log_dir,
        )
        await asyncio.gather(*(s.start() for s in services.values()))
        stack = GridTrustStack(
            nats_server,
            database_url,
            keys_dir,
            log_dir,
            gateway_url,
            services,
            {},
            {s.node_id: s for s in specs},
            httpx.AsyncClient(base_url=gateway_url, timeout=30),
            seed_files,
        )
        for spec in specs:
            stack.nodes[spec.node_id] = _node_process(
                spec, services["grid-scheduler"].env, log_dir, seed_files
            )
        await asyncio.gather(*(s.wait_ready() for s in services.values()))
    except BaseException:
        for s in locals().get("services", {}).values():
            await s.stop()
        nats_server.stop()
        raise
    if start_nodes:
        try:
            await stack.start_nodes()
        except BaseException:
            await stack.stop()
            raise
    return stack


# ----- the tasks of the scenarios -------------------------------------------------------------------


def charges(variant: int) -> dict[str, Any]:
    """A predict_expenses input: a year of two categories' charges; `variant` makes it its own task."""
    history = [
        {"month": f"2024-{m:02d}", "category": "nettoyage", "amount": 400 + 7 * m + variant}
        for m in range(1, 13)
    ] + [
        {
            "month": f"2024-{m:02d}",
            "category": "chauffage",
            "amount": 900 + 55 * math.cos(m / 2) + 3 * variant,
        }
        for m in range(1, 13)
    ]
    return {"history": history, "horizon_months": 1 + variant % 6}


TRANSLATION = {"text": "La séance est levée à 21 h 40.", "target_language": "nl"}


def replicas_by_node(task: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    found: dict[str, list[Mapping[str, Any]]] = {}
    for replica in (task.get("verification") or {}).get("replicas", []):
        found.setdefault(replica["node_id"], []).append(replica)
    return found


def tokens(value: Any) -> float:
    """An amount of tokens from the API (a number), 0 when absent."""
    return float(value or 0)
