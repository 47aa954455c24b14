"""Is the NATS the stack writes to durable? Checked, not assumed (issue 12, finding 8).

An acknowledged publish survives a crash of the server only when JetStream fsyncs each write
(`sync_interval: always`) or the stream is replicated on three servers (a write is acked once a
majority stored it). nats-server's default fsyncs every two minutes: Jepsen's analysis of NATS
2.12 lost acknowledged writes that way. `koprogo up` writes `sync_interval: always` into its
embedded server's configuration; a deployment's server is configured by its operator, so the
stream setup step checks it:

* `KOPROGO_EVENTS` with 3 replicas or more: durable by replication.
* Else the server's own configuration, read from its monitoring endpoint (`NATS_MONITOR_URL`,
  e.g. `http://nats:8222`: `/varz` says `jetstream.config.sync_always`), on the internal network.
* Else it cannot be known.

`NATS_DURABILITY` says what to do with what was found: `refuse` (stop the setup step, so the
services never start on it) or `warn` (go on, saying so loudly). The default refuses a server
known to fsync late and warns when it cannot be known.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from koprogo_shared import subjects

log = logging.getLogger(__name__)

MONITOR_TIMEOUT_S = 3.0


class Durability(enum.Enum):
    REPLICATED = "replicated"
    SYNC_ALWAYS = "sync_always"
    LATE_FSYNC = "late_fsync"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Finding:
    durability: Durability
    detail: str


class DurabilityError(RuntimeError):
    """The NATS server may lose acknowledged writes, and the operator asked to refuse that."""


def policy_from(environ: Mapping[str, str]) -> str | None:
    """`NATS_DURABILITY`: "refuse", "warn", or None for the default; ValueError otherwise."""
    value = (environ.get("NATS_DURABILITY") or "").strip().lower()
    if value in ("", "refuse", "warn"):
        return value or None
    raise ValueError(f"NATS_DURABILITY={value!r}: use 'refuse' or 'warn'")


def _read_varz(monitor_url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{monitor_url.rstrip('/')}/varz", timeout=MONITOR_TIMEOUT_S) as answer:
        varz = json.loads(answer.read())
    if not isinstance(varz, dict):
        raise ValueError("/varz is not a JSON object")
    return varz


async def observed(js: JetStreamContext, monitor_url: str | None) -> Finding:
    """What can be learnt of the server's durability (the event stream must exist)."""
    try:
        replicas = (await js.stream_info(subjects.EVENTS_STREAM)).config.num_replicas or 1
    except NotFoundError:
        replicas = 1  # not declared yet (a development server's services declare it): one replica
    if replicas >= 3:
        return Finding(Durability.REPLICATED, f"{subjects.EVENTS_STREAM} has {replicas} replicas")
    if not monitor_url:
        return Finding(
            Durability.UNKNOWN,
            f"{subjects.EVENTS_STREAM} has {replicas} replica(s) and no NATS_MONITOR_URL tells "
            "whether the server fsyncs every write",
        )
    try:
        varz = await asyncio.to_thread(_read_varz, monitor_url)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        return Finding(Durability.UNKNOWN, f"{monitor_url}/varz could not be read ({exc})")
    jetstream = varz.get("jetstream")
    config = jetstream.get("config") if isinstance(jetstream, dict) else None
    if not isinstance(config, dict):
        return Finding(Durability.UNKNOWN, f"{monitor_url}/varz shows no JetStream configuration")
    if config.get("sync_always") is True:
        return Finding(Durability.SYNC_ALWAYS, "the server fsyncs every write (sync_interval: always)")
    interval_ns = config.get("sync_interval")
    every = f"every {interval_ns / 1e9:g} s" if isinstance(interval_ns, int | float) else "late"
    return Finding(
        Durability.LATE_FSYNC,
        f"the server fsyncs {every} and {subjects.EVENTS_STREAM} has {replicas} replica(s): "
        "acknowledged writes can be lost on a crash",
    )


async def check(js: JetStreamContext, environ: Mapping[str, str]) -> Finding:
    """`observed` then `judge`, as `environ` (NATS_MONITOR_URL, NATS_DURABILITY) says; raises
    DurabilityError (or ValueError for a bad NATS_DURABILITY)."""
    policy = policy_from(environ)
    finding = await observed(js, environ.get("NATS_MONITOR_URL") or None)
    judge(finding, policy)
    return finding


def judge(finding: Finding, policy: str | None) -> None:
    """Raise DurabilityError when `policy` (or the default) refuses `finding`; warn otherwise."""
    if finding.durability in (Durability.REPLICATED, Durability.SYNC_ALWAYS):
        log.info("NATS durability: %s", finding.detail)
        return
    refuse = policy == "refuse" or (policy is None and finding.durability is Durability.LATE_FSYNC)
    fix = (
        "set `sync_interval: always` in the server's jetstream block (deploy/nats/nats-server.conf), "
        "or run a 3-server cluster (NATS_REPLICAS=3); NATS_MONITOR_URL lets the check read the "
        "server's configuration; NATS_DURABILITY=warn accepts the risk, =refuse refuses it"
    )
    if refuse:
        raise DurabilityError(f"NATS may lose acknowledged events: {finding.detail}. Fix: {fix}")
    log.warning("NATS MAY LOSE ACKNOWLEDGED EVENTS: %s. Fix: %s", finding.detail, fix)
