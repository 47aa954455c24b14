"""The one NATS helper: connect (with the identity's nkey), declare or await streams;
publishing (events, chat outcomes, replies) is `koprogo_shared.publishing`.

`python -m koprogo_shared.nats_connection` is a deployment's stream setup step: it declares
every KOPROGO_* stream and both key-value buckets (`koprogo_shared.kv_buckets`) at NATS_URL as
the identity of NATS_NKEY_SEED_FILE (the operator's, `admin`), before the services start; the
counters' bucket keeps them for the gateways' RATE_LIMIT_WINDOW_S (default 60).

NATS_URL may list several servers, comma-separated (`nats://a:4222,nats://b:4222`), as a cluster's
clients are configured: the client connects to any of them and moves to another by itself.
Streams and buckets get NATS_REPLICAS replicas; unset, 3 when the server is in a cluster of at
least three servers, else 1 (`stream_replicas`). The setup step raises an existing stream's or
bucket's replicas to that count (an R1 stream of an earlier version becomes R3), never lowers them.

Each service and each edge node has its own nkey (a user seed in a file, `NATS_NKEY_SEED_FILE`);
the server's configuration gives each public key its subject permissions (see
`koprogo_cli.nats_permissions`). Without a seed file the client connects anonymously, as a
development server without authorization expects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import nats
import nkeys
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from koprogo_shared import subjects
from koprogo_shared.durability import DurabilityError, policy_from
from koprogo_shared.durability import check as check_durability
from koprogo_shared.grid_stores import created
from koprogo_shared.kv_buckets import (
    BUCKETS,
    DEFAULT_RATE_LIMIT_WINDOW_S,
    IDEMPOTENCY_BUCKET,
    bucket_stream,
    check_rate_limit_ttl,
    declare_buckets,
    ensure_idempotency_bucket,
    ensure_rate_limit_bucket,
    rate_limit_ttl_s,
    rate_limit_window_from,
)
from koprogo_shared.leaf_site import site_streams
from koprogo_shared.nats_privates import client_of, server_info
from koprogo_shared.routing_policies import ensure_routing_policy_bucket
from koprogo_shared.subjects import STREAMS, StreamSpec, inbox_prefix

log = logging.getLogger(__name__)

# The setting of the streams' and buckets' replica count (1 to 5, JetStream's maximum).
REPLICAS_ENV = "NATS_REPLICAS"
MAX_REPLICAS = 5

# JetStream's "no suitable peers for placement": asked again for PLACEMENT_WAIT_S by the setup
# step, while a cluster's servers announce themselves, then reported.
JS_CLUSTER_NO_PEERS = 10005
PLACEMENT_WAIT_S = 30.0


class NatsCredentialsError(RuntimeError):
    """The nkey seed file is unreadable or does not hold a NATS user seed."""


def nkey_public_key(seed_file: Path) -> str:
    """The public key (`U...`) of the user seed in `seed_file`; raises NatsCredentialsError."""
    try:
        seed = bytearray(seed_file.read_bytes().strip())
    except OSError as exc:
        raise NatsCredentialsError(f"cannot read the NATS nkey seed {seed_file}: {exc.strerror}") from None
    try:
        key_pair = nkeys.from_seed(seed)
        public_key = key_pair.public_key.decode()
        key_pair.wipe()
    except (nkeys.NkeysError, ValueError):
        raise NatsCredentialsError(f"{seed_file} does not hold a NATS nkey seed") from None
    if not public_key.startswith("U"):
        raise NatsCredentialsError(f"{seed_file} holds a seed for a {public_key[0]} key, not for a user (U)")
    return public_key


def nats_servers(url: str) -> list[str]:
    """The servers of NATS_URL: one URL, or several separated by commas (a cluster's); ValueError when none."""
    servers = [server.strip() for server in url.split(",") if server.strip()]
    if not servers:
        raise ValueError(f"NATS_URL names no server: {url!r} (e.g. nats://a:4222,nats://b:4222)")
    return servers


def replicas_setting(environ: Mapping[str, str]) -> int | None:
    """NATS_REPLICAS as a count, None when unset; ValueError when it is not 1 to 5."""
    raw = environ.get(REPLICAS_ENV, "").strip()
    if not raw:
        return None
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_REPLICAS:
        raise ValueError(f"{REPLICAS_ENV} must be a whole number from 1 to {MAX_REPLICAS}, not {raw!r}")
    return count


def cluster_replicas(server_info: Mapping[str, Any], known_servers: int = 0) -> int:
    """3 when the server is in a cluster of at least three servers, else 1: its INFO's `cluster`
    and `connect_urls` (every server of the cluster, itself included, as of the connection),
    or the `known_servers` the client has learnt since (the cluster announces new ones).

    Two servers cannot keep a majority when one is lost, so they get no more than one. A
    cluster whose servers do not all run JetStream makes the R3 declaration fail with
    "insufficient resources": set NATS_REPLICAS then.
    """
    servers = max(len(server_info.get("connect_urls") or []), known_servers)
    return 3 if server_info.get("cluster") and servers >= 3 else 1


def stream_replicas(nc: NATS, environ: Mapping[str, str] | None = None) -> int:
    """The replicas of every stream and bucket: NATS_REPLICAS, else what the cluster allows."""
    explicit = replicas_setting(os.environ if environ is None else environ)
    if explicit is not None:
        return explicit
    # nats-py keeps the server's INFO privately; it is the only place the cluster shows.
    return cluster_replicas(server_info(nc), len(nc.servers))


# How long the setup step lets a cluster that is still forming announce its servers.
CLUSTER_SETTLE_S = 5.0


async def _settled_replicas(nc: NATS) -> int:
    """`stream_replicas`, once a cluster of fewer than three known servers had a moment to
    announce the others (the setup step may run while the servers are still meeting)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + CLUSTER_SETTLE_S
    replicas = stream_replicas(nc)
    while replicas < 3 and server_info(nc).get("cluster") and replicas_setting(os.environ) is None:
        if loop.time() >= until:
            log.warning("NATS cluster of fewer than three servers: streams get %d replica(s)", replicas)
            break
        await asyncio.sleep(0.2)
        replicas = stream_replicas(nc)
    return replicas


async def connect_nats(
    url: str, name: str, *, nkey_seed_file: Path | None = None, inbox_root: str = subjects.INBOX_ROOT
) -> tuple[NATS, JetStreamContext]:
    """Connect with unlimited reconnects; errors are logged, never swallowed silently.

    `url` may list several servers, comma-separated: the client takes any and, when it is
    lost, reconnects to another (and to the servers the cluster announces).

    With `nkey_seed_file` the client proves it holds that nkey (the seed never leaves the
    process) and takes its replies under `_INBOX.<public key>` (`<inbox_root>.<public key>`), the
    only inbox its permissions let it read. A key the server does not know is refused at every attempt
    (logged as an authorization violation) until the server's configuration lists it.
    """
    credentials: dict[str, Any] = {}
    if nkey_seed_file is not None:
        public_key = nkey_public_key(nkey_seed_file)
        credentials = {
            "nkeys_seed": str(nkey_seed_file),
            "inbox_prefix": inbox_prefix(public_key, inbox_root),
        }

    nc = NATS()
    last_reported: Exception | None = None

    async def on_error(exc: Exception) -> None:
        nonlocal last_reported
        last_reported = exc
        log.warning("nats error (%s): %s", name, exc)

    async def on_disconnected() -> None:
        # nats-py calls this on our own close() and drain() too, after marking the client
        # closed: a service's normal stop is no warning. A lost connection arrives while the
        # client is still reconnecting; a server's -ERR closes it with `last_error` set to an
        # error that never went through on_error (every other error does).
        if not nc.is_closed:
            log.warning("nats disconnected (%s); reconnecting", name)
        elif nc.last_error is not None and nc.last_error is not last_reported:
            log.warning("nats connection closed by the server (%s): %s", name, nc.last_error)
        else:
            log.info("nats connection closed (%s)", name)

    async def on_reconnected() -> None:
        log.info("nats reconnected (%s)", name)

    await nc.connect(
        servers=nats_servers(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # annotated int; it is slept as given
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        **credentials,
    )
    return nc, nc.jetstream(timeout=5)


def _stream_config(spec: StreamSpec, replicas: int) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=spec.subjects,
        retention=js_api.RetentionPolicy(spec.retention),
        storage=js_api.StorageType.FILE,
        max_age=spec.max_age_s,
        max_bytes=spec.max_bytes,
        duplicate_window=spec.duplicate_window_s,
        discard=js_api.DiscardPolicy(spec.discard),
        num_replicas=replicas,
    )


def server_domain(nc: NATS) -> str | None:
    """The JetStream domain of the server the client is connected to (its INFO says it), if any:
    a building's (`leaf_site.is_building_domain`) runs its services another way."""
    domain = server_info(nc).get("domain")
    return str(domain) if domain else None


async def subscribed(nc: NATS) -> None:
    """Return once the server holds every subscription `nc` made so far.

    `flush()` alone does not ensure it with nats-py (2.16): it writes its PING straight to the
    socket, ahead of the commands still queued for the client's flusher task (the SUB just
    made), so the PONG may come back before the server has the subscription, and a message
    another connection publishes meanwhile reaches nobody: about 1 subscription in 100 here
    (subscribe, flush, publish from a second connection: 26 to 29 lost of 3000). The first
    round trip gives the flusher its turn (the SUB leaves); the second PING follows the SUB on
    the socket, so its PONG proves the server processed it (0 lost of 3000).
    """
    await nc.flush()
    await nc.flush()


async def ensure_streams(js: JetStreamContext, *, replicas: int | None = None) -> None:
    """Create every stream, or bring an existing one to the declared configuration.

    Only the operator's identity (`admin`) may on a secured server: `koprogo up` and the
    deployments' setup step (`declare_streams`) run this before the services start; the
    services `wait_for_streams`. An anonymous client of a development server may too.
    `replicas` (default: `stream_replicas`) raises an existing stream's replicas, never
    lowers them: a service started with another count does not strip a cluster's copies
    (lower them by hand, `nats stream edit --replicas`).
    """
    wanted = stream_replicas(client_of(js)) if replicas is None else replicas
    # A building's server (its JetStream domain says so) keeps another KOPROGO_WORK (leaf_site).
    for spec in site_streams(server_domain(client_of(js))):
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            if await created(js.add_stream(_stream_config(spec, wanted))) is not None:
                continue
            # Another service created it between our two calls.
            info = await js.stream_info(spec.name)
        current = info.config.num_replicas or 1
        if current < wanted:
            log.info("stream %s: %d replica(s) raised to %d", spec.name, current, wanted)
        config = _stream_config(spec, max(current, wanted))
        # The sources an operator added (a building's events sourced by the hub,
        # `leaf_site.source_building`) are not the declaration's to remove.
        config.sources = info.config.sources
        await js.update_stream(config)


async def _jetstream_ready(js: JetStreamContext, url: str) -> None:
    """Until JetStream answers (a cluster that just started has no meta leader yet)."""
    while True:
        try:
            await js.account_info()
            return
        except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError, TimeoutError) as exc:
            log.warning("JetStream at %s not ready (%s); asking again", url, exc or type(exc).__name__)
            await asyncio.sleep(0.5)


async def declare_streams(
    url: str,
    *,
    nkey_seed_file: Path | None = None,
    rate_limit_window_s: float = DEFAULT_RATE_LIMIT_WINDOW_S,
    durability_environ: Mapping[str, str] | None = None,
) -> None:
    """Connect (as the operator, given its seed), declare every KOPROGO_* stream and bucket, disconnect.

    Each gets `stream_replicas` replicas (NATS_REPLICAS, else what the cluster allows). A
    cluster that just started answers nothing, or "JetStream system temporarily unavailable",
    until it has elected its leader: asked again until it does (the caller bounds the wait).
    With `durability_environ` (NATS_MONITOR_URL, NATS_DURABILITY), the server's durability is
    then checked (`durability.check`: raises DurabilityError when refused).
    """
    nc, js = await connect_nats(url, "koprogo-stream-setup", nkey_seed_file=nkey_seed_file)
    try:
        # A cluster's servers learn of each other as their routes come up, and the count of
        # replicas is read from what the connected server knows: wait for the JetStream meta
        # leader first (a quorum of the cluster has met), then let the rest announce themselves.
        await _jetstream_ready(js, url)
        replicas = await _settled_replicas(nc)
        log.info("streams and buckets at %s: %d replica(s)", url, replicas)
        loop = asyncio.get_running_loop()
        placing_until = loop.time() + PLACEMENT_WAIT_S
        while True:
            try:
                await ensure_streams(js, replicas=replicas)
                await declare_buckets(js, rate_limit_window_s=rate_limit_window_s, replicas=replicas)
                break
            except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError, TimeoutError) as exc:
                log.warning("JetStream at %s not ready (%s); asking again", url, exc or type(exc).__name__)
                await asyncio.sleep(0.5)
            except BadRequestError as exc:
                # A cluster whose servers have not all announced JetStream yet refuses a
                # replicated stream for a while; any other refusal (replicas a single server
                # cannot keep) is a configuration to report at once.
                if exc.err_code != JS_CLUSTER_NO_PEERS or loop.time() > placing_until:
                    raise
                log.warning("JetStream at %s cannot place a stream yet (%s); asking again", url, exc)
                await asyncio.sleep(0.5)
        if durability_environ is not None:
            await check_durability(js, durability_environ)
    finally:
        await nc.close()


class StreamsMissingError(RuntimeError):
    """A stream the service needs was not declared in time (the setup step did not run)."""


STREAMS_WAIT_S = 300.0


async def wait_for_streams(
    js: JetStreamContext, names: Iterable[str], *, poll_s: float = 0.5, timeout_s: float | None = None
) -> None:
    """Return once every named stream exists, for identities that may not declare streams.

    A node may start before the streams are declared (a Pi boots first). Timeouts are
    retried too: a permission missing from the server's configuration shows in the log as
    a permissions violation while this waits. With `timeout_s`, raises StreamsMissingError
    when a stream is still missing after that long.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    for name in names:
        said = False
        while True:
            try:
                await js.stream_info(name)
                break
            except NotFoundError:
                if not said:
                    log.info(
                        "waiting for stream %s (declared by `koprogo up` or the deployment's "
                        "stream setup step, as the admin identity)",
                        name,
                    )
                    said = True
            except (TimeoutError, nats.errors.TimeoutError):
                log.warning("no answer about stream %s; asking again", name)
            if deadline is not None and loop.time() >= deadline:
                raise StreamsMissingError(
                    f"stream {name} still missing after {timeout_s:g}s: declare the streams "
                    "as the admin identity first (`koprogo up` does; in a deployment, the "
                    "stream setup step: python -m koprogo_shared.nats_connection)"
                )
            await asyncio.sleep(poll_s)


async def streams_for_service(js: JetStreamContext, nkey_seed_file: Path | None, *, timeout_s: float) -> None:
    """The ledger's and the router's start: wait for the streams an operator declared.

    With an nkey (a secured server) the service may not create or update streams (least
    privilege: shrinking `max_age` would purge them), so it waits for them. Anonymous, on a
    development server without authorization, it declares them as before.
    """
    if nkey_seed_file is None:
        await ensure_streams(js)
    else:
        await wait_for_streams(js, [spec.name for spec in STREAMS], timeout_s=timeout_s)


async def buckets_for_service(
    js: JetStreamContext,
    nkey_seed_file: Path | None,
    *,
    rate_limit_window_s: float | None,
    timeout_s: float,
) -> None:
    """The gateway's and the router's start: the routing policies' bucket, and the counters' and
    the idempotency keys' when `rate_limit_window_s` is given (the gateway's).

    With an nkey the service may not create or alter a bucket (it would purge counters or
    policies), so it waits for the setup step's and checks the counters are kept long enough
    for its window (`kv_buckets.RateLimitBucketError` otherwise). Anonymous, it declares them.
    """
    if nkey_seed_file is None:
        replicas = stream_replicas(client_of(js))
        if rate_limit_window_s is not None:
            await ensure_rate_limit_bucket(js, rate_limit_ttl_s(rate_limit_window_s), replicas=replicas)
            await ensure_idempotency_bucket(js, replicas=replicas)
        await ensure_routing_policy_bucket(js, replicas=replicas)
        return
    names = [bucket_stream(subjects.ROUTING_POLICY_BUCKET)]
    if rate_limit_window_s is not None:
        names += [bucket_stream(subjects.RATE_LIMIT_BUCKET), bucket_stream(IDEMPOTENCY_BUCKET)]
    await wait_for_streams(js, names, timeout_s=timeout_s)
    if rate_limit_window_s is not None:
        counters = await js.stream_info(bucket_stream(subjects.RATE_LIMIT_BUCKET))
        check_rate_limit_ttl(counters.config.max_age, rate_limit_window_s)


def main() -> int:
    """The stream setup step: declare the streams and buckets at $NATS_URL as $NATS_NKEY_SEED_FILE's identity."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    seed = os.environ.get("NATS_NKEY_SEED_FILE")
    try:
        window = rate_limit_window_from(os.environ)
    except ValueError:
        print("stream setup: RATE_LIMIT_WINDOW_S must be a positive number of seconds", file=sys.stderr)
        return 1
    try:
        replicas_setting(os.environ)
    except ValueError as exc:
        print(f"stream setup: {exc}", file=sys.stderr)
        return 1
    try:
        policy_from(os.environ)
    except ValueError as exc:
        print(f"stream setup: {exc}", file=sys.stderr)
        return 1
    declaring = declare_streams(
        url,
        nkey_seed_file=Path(seed) if seed else None,
        rate_limit_window_s=window,
        durability_environ=os.environ,
    )
    try:
        asyncio.run(asyncio.wait_for(declaring, 120))
    except DurabilityError as exc:
        print(f"stream setup: {exc}", file=sys.stderr)
        return 1
    except (NatsCredentialsError, TimeoutError, nats.errors.Error) as exc:
        print(
            f"stream setup: cannot declare the streams at {url}: {exc or type(exc).__name__}", file=sys.stderr
        )
        return 1
    log.info("declared streams %s at %s", ", ".join(spec.name for spec in STREAMS), url)
    log.info("declared buckets %s (counters kept %g s)", ", ".join(BUCKETS), rate_limit_ttl_s(window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
