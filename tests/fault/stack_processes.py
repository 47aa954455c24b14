"""The chat path as separate OS processes, each one killable with SIGKILL and started again as it was.

The console scripts `koprogo up` runs (`koprogo-ledger`, `koprogo-router`, `koprogo-node`,
`koprogo-cloud`, `koprogo-gateway`), each with the environment `koprogo up` gives it
(cli/src/koprogo_cli/stack.py: NATS_URL, DATABASE_URL and the content keys only where used,
an ops port), on the test's NATS and PostgreSQL, without NATS keys (as with a given NATS_URL).
Only the waits that bound a test's length are shorter: a work item or event batch held by a
killed process comes back after 3 s (ACK_WAIT_S, LEDGER_ACK_WAIT_S) instead of 10-30 s, and a
node is seen dead after 1.5 s (HEARTBEAT_INTERVAL_S 0.5). A restart reuses the same argv and
environment. Each start writes its own output file (`<name>.<start>.log`), so the log of a
killed process is kept beside its successor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from koprogo_cli.embedded import tail_of
from koprogo_cli.ports import free_port
from koprogo_cli.stack import SCOPED_ENV
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import TEST_CONTENT_KEYS

# What a test's environment may carry that no service must inherit unasked.
_NOT_INHERITED = (*SCOPED_ENV, "NATS_URL", "NATS_NKEY_SEED_FILE", "LOG_FILE", "NODE_ID", "CONTENT_KEYS_FILE")
# How long a held item waits before JetStream gives it to someone else, for every worker here.
ACK_WAIT_S = "3"
HEARTBEAT_INTERVAL_S = "0.5"


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _base_env(nats_url: str) -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in _NOT_INHERITED and not k.startswith("CONTENT_KEY") and not k.startswith("PYTEST")
    }
    return inherited | {"NATS_URL": nats_url, "LOG_LEVEL": "INFO"}


@dataclass
class ServiceProcess:
    """One service's process: started, killed with SIGKILL, started again with the same argv and env."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    log_dir: Path
    ready_timeout_s: float = 90.0
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    kills: list[float] = field(default_factory=list)

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.{self.starts}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with self.log_file.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True
            )

    async def wait_ready(self) -> None:
        """Until its /ready answers 200; fails with the tail of its log if it exits or takes too long."""
        deadline = time.monotonic() + self.ready_timeout_s
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"{self.name} exited with {self.proc.returncode}:\n{tail_of(self.log_file, 40)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.ready_url)).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.name} not ready after {self.ready_timeout_s:g}s:\n{tail_of(self.log_file, 40)}"
                    )
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL, as the OOM killer or a power cut of that process alone: no handler runs."""
        assert self.proc is not None and self.running, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.kills.append(time.monotonic())

    async def restart(self) -> None:
        """Started again, same argv and environment, and ready."""
        await self.start()
        await self.wait_ready()

    async def stop(self) -> None:
        """SIGTERM (a clean stop), SIGKILL after 15 s."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    def logs(self, lines: int = 30) -> str:
        """The tail of every start's log, oldest first."""
        return "\n".join(
            f"--- {self.name}, start {n}:\n{tail_of(self.log_dir / f'{self.name}.{n}.log', lines)}"
            for n in range(1, self.starts + 1)
        )


@dataclass
class ProcessStack:
    """ledger, router, optionally the grid scheduler, edge nodes, optionally the cloud worker, and the
    gateway, each its own process."""

    nats_url: str
    database_url: str
    gateway_url: str
    chat_timeout_s: float
    services: dict[str, ServiceProcess]

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    @property
    def edge_nodes(self) -> list[str]:
        return [name for name in self.services if name.startswith("edge-")]

    async def start(self) -> None:
        """Every service at once (each waits for the streams and the schema it needs), then every one ready."""
        await asyncio.gather(*(s.start() for s in self.services.values()))
        await asyncio.gather(*(s.wait_ready() for s in self.services.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.services.values()), return_exceptions=True)

    def logs(self, lines: int = 30) -> str:
        return "\n".join(s.logs(lines) for s in self.services.values())


def process_stack(
    nats_url: str,
    database_url: str,
    log_dir: Path,
    *,
    edge_nodes: int = 1,
    cloud_deployments_file: Path | None = None,
    chat_timeout_s: float = 12.0,
    grid: bool = False,
    env: Mapping[str, str] | None = None,
) -> ProcessStack:
    """The processes of a stack (not started): what `koprogo up` runs, on the given servers;
    `env` goes to every service besides (as `koprogo up --traces` gives each its OTEL_* variables)."""
    base = _base_env(nats_url) | dict(env or {})
    content_keys = dict(TEST_CONTENT_KEYS)
    services: dict[str, ServiceProcess] = {}

    def ops(name: str, argv: list[str], env: dict[str, str]) -> None:
        port = free_port()
        services[name] = ServiceProcess(
            name, argv, base | env | {"OPS_PORT": str(port)}, f"http://127.0.0.1:{port}/ready", log_dir
        )

    ops(
        "ledger",
        [_script("koprogo-ledger")],
        {"DATABASE_URL": database_url, **content_keys, "LEDGER_ACK_WAIT_S": ACK_WAIT_S},
    )
    ops("router", [_script("koprogo-router")], {})
    if grid:
        # The grid scheduler, and every edge node joins the grid (`--grid`).
        ops("grid-scheduler", [_script("koprogo-grid-scheduler")], {})
    for i in range(edge_nodes):
        port = free_port()
        node_id = f"edge-{i}"
        services[node_id] = ServiceProcess(
            node_id,
            [
                _script("koprogo-node"),
                "--port",
                str(port),
                "--node-id",
                node_id,
                *(["--grid"] if grid else []),
            ],
            base
            | {
                "NODE_MODEL": BUNDLED_MODEL_ID,
                "HEARTBEAT_INTERVAL_S": HEARTBEAT_INTERVAL_S,
                "ACK_WAIT_S": ACK_WAIT_S,
                # Two cores: one thread per node leaves room for the others.
                "LLAMA_THREADS": "1",
            },
            f"http://127.0.0.1:{port}/ready",
            log_dir,
        )
    if cloud_deployments_file is not None:
        ops(
            "cloud",
            [_script("koprogo-cloud")],
            {
                "CLOUD_DEPLOYMENTS_FILE": str(cloud_deployments_file),
                "ACK_WAIT_S": ACK_WAIT_S,
                "STATUS_INTERVAL_S": HEARTBEAT_INTERVAL_S,
            },
        )
    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    services["gateway"] = ServiceProcess(
        "gateway",
        [_script("koprogo-gateway")],
        base
        | {
            "DATABASE_URL": database_url,
            **content_keys,
            "AUTH_DISABLED": "true",
            "GATEWAY_PORT": str(gateway_port),
            "CHAT_TIMEOUT_S": f"{chat_timeout_s:g}",
            # As `koprogo up` on one machine: its shared pool's nodes are its own.
            "GATEWAY_ROUTES_EDGE_POOLS": "all",
        },
        f"{gateway_url}/ready",
        log_dir,
    )
    return ProcessStack(nats_url, database_url, gateway_url, chat_timeout_s, services)


# Starts a stack of processes with `process_stack`'s options, ready; see `process_stacks`.
StackFactory = Callable[..., Awaitable[ProcessStack]]


@contextlib.asynccontextmanager
async def process_stacks(
    nats_url: str, database_url: str, folder: Path, *, env: Mapping[str, str] | None = None
) -> AsyncIterator[StackFactory]:
    """A factory of started stacks (`process_stack`'s options), each logging under its own folder of
    `folder`; `env` goes to every service of every stack, a call's `env=` on top of it, a call's
    `database=` or `nats=` replaces the URLs. Every stack started is stopped on leaving."""
    stacks: list[ProcessStack] = []
    shared_env = dict(env or {})

    async def make(
        *,
        database: str | None = None,
        nats: str | None = None,
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> ProcessStack:
        logs = folder / f"logs-{len(stacks)}"
        logs.mkdir()
        stack = process_stack(
            nats or nats_url,
            database or database_url,
            logs,
            env=shared_env | dict(env or {}),
            **options,
        )
        stacks.append(stack)
        await stack.start()
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            await stack.stop()
