"""`koprogo up` and `koprogo down`: one stack per data folder, every message with its next step.

A second `up` on a folder whose stack runs says so (pid, URL, how to stop it) and exits 0
without touching it; a busy port or leftovers of a killed stack are one line naming the
cause and the fix, before anything starts. `--model` (repeatable) serves pulled or local
GGUF models beside the bundled one, each in an edge node of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from koprogo_cli.dev_auth import DEMO_COPRO_ID, DevAuthError, dev_token_path
from koprogo_cli.embedded import EmbeddedServerError
from koprogo_cli.instance import (
    GATEWAY_PORT,
    StackLock,
    StackRecord,
    data_dir_of,
    folder_args,
    leftovers,
    running_stack,
    terminate,
)
from koprogo_cli.invocation import command_hint
from koprogo_cli.login_link import dev_login_url
from koprogo_cli.nats_keys import roster_file
from koprogo_cli.ports import free_port, port_free, preferred_port
from koprogo_cli.served_models import ServedModel, ServedModelError, served_models
from koprogo_cli.stack import NODE_PORT, Stack, StackError
from koprogo_cli.trace_receiver import OTLP_HTTP_PORT, TraceReceiver, exporter_env, store_for
from koprogo_shared.catalogue import BUNDLED_MODEL_ID, RECOMMENDED_MODEL_ID
from koprogo_shared.local_tokens import LOGIN_CODE_TTL
from koprogo_shared.logging_setup import open_private_log
from koprogo_shared.node_roster import parse_roster

READY_LINE = "Ctrl-C stops everything."
# The grid scheduler's default GRID_QUORUM (services/grid-scheduler), for the welcome's note.
DEFAULT_GRID_QUORUM = 2
DEMO_QUESTION = "Bonjour, résume ce PV en une phrase."
# Long enough to show an answer, short enough for a first start on a Pi.
DEMO_MAX_TOKENS = 64


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived while the stack was starting."""


def _already_running(record: StackRecord, data_dir: Path, models: list[ServedModel], specs: list[str]) -> int:
    """Say a stack runs on this folder and leave it alone: 0, unless it lacks a model asked for."""
    where = record.gateway_url or "its gateway"
    who = f"pid {record.pid}" if record.pid > 0 else "starting"
    print(f"KoproGo Symbiose is already running on {data_dir} ({who}): {where}")
    served = {m for ids in record.nodes.values() for m in ids}
    if missing := [m.model_id for m in models if m.model_id not in served]:
        again = command_hint("up", *folder_args(data_dir), *(f for spec in specs for f in ("--model", spec)))
        print(
            f"It does not serve {', '.join(missing)}: restart it with them, "
            f"`{command_hint('down', *folder_args(data_dir))}` then `{again}`"
        )
        return 1
    print(
        f"Stop it with `{command_hint('down', *folder_args(data_dir))}`; "
        f"start another stack with its own folder and port: "
        f"`{command_hint('up', '--data-dir', 'OTHER_FOLDER', '--port', str(free_port()))}`"
    )
    return 0


def _refuse_to_start(data_dir: Path, port: int) -> str | None:
    """Why a stack cannot start on `data_dir` and `port` now (one line with the fix), or None."""
    if pids := leftovers(data_dir):
        return (
            f"processes of an earlier stack on {data_dir} are still running (pids "
            f"{', '.join(map(str, pids))}): stop them with `{command_hint('down', *folder_args(data_dir))}`, "
            "then start again"
        )
    if not port_free(port):
        return (
            f"port {port} is in use by another program: stop it, or start on another port: "
            f"`{command_hint('up', *folder_args(data_dir), '--port', str(free_port()))}`"
        )
    return None


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    if (args.site == "building") != bool(args.hub):
        print(
            "koprogo up: --site building and --hub nats-leaf://HOST:7422 go together (a building's folder "
            "is made at the hub by `koprogo building add`)",
            file=sys.stderr,
        )
        return 2
    try:  # first: a model that cannot be served is the thing to fix, running stack or not
        models = served_models(args.model)
    except ServedModelError as exc:
        print(f"koprogo up: {exc}", file=sys.stderr)
        return 2
    if (record := running_stack(data_dir)) is not None:
        return _already_running(record, data_dir, models, args.model)
    if reason := _refuse_to_start(data_dir, args.port):
        print(f"koprogo up: {reason}", file=sys.stderr)
        return 1
    if args.detach:
        return _up_detached(args, data_dir)
    lock = StackLock(data_dir)
    if not lock.acquire():  # another `up` won the race since the check above
        return _already_running(running_stack(data_dir) or StackRecord(0), data_dir, models, args.model)
    try:
        return _run_stack(args, data_dir, models, lock)
    finally:
        lock.release()


def _run_stack(args: argparse.Namespace, data_dir: Path, models: list[ServedModel], lock: StackLock) -> int:
    try:
        # Started first and stopped last: the services' final exports on their way out land too.
        receiver = (
            TraceReceiver(store_for(data_dir), preferred_port(OTLP_HTTP_PORT)).start()
            if args.traces
            else None
        )
    except OSError as exc:
        print(f"koprogo up failed: the trace receiver (--traces) could not listen: {exc}", file=sys.stderr)
        return 1
    stack = Stack(
        data_dir,
        gateway_port=args.port,
        node_port=preferred_port(NODE_PORT),
        models=models,
        on_processes=lock.record,
        lan=args.lan,
        service_env=exporter_env(receiver) if receiver else {},
        hub_urls=args.hub,
        leaf_port=args.leaf_port,
    )
    running = False
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if not running:
            raise StopRequested(signal.Signals(signum).name)

    # Explicit handlers: a process started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
        for model_id in [BUNDLED_MODEL_ID, *(m.model_id for m in models)]:
            stack.wait_for_model(model_id, timeout=30.0 if model_id == BUNDLED_MODEL_ID else 600.0)
        _print_welcome(stack, data_dir, models)
        if receiver is not None:
            print(
                f"traces: every service sends its spans to {receiver.endpoint} (OTLP/HTTP), kept in "
                f"{receiver.store.folder}; a request's tree: `{command_hint('trace', 'TRACEPARENT', *folder_args(data_dir))}`, "
                f"the last chat's: `{command_hint('trace', '--last', *folder_args(data_dir))}`"
            )
        if not args.no_demo:
            demo_model = models[0].model_id if models else BUNDLED_MODEL_ID
            traceparent = _demo_chat(stack.gateway_url, stack.dev_token, dev_token_path(data_dir), demo_model)
            if receiver is not None and traceparent:
                print(
                    f"its trace: `{command_hint('trace', traceparent, *folder_args(data_dir))}`", flush=True
                )
        print(READY_LINE, flush=True)
        running = True
        while not stopping:
            time.sleep(0.5)
            if dead := stack.dead_services():
                print(f"stopping: {', '.join(dead)} exited; see {data_dir}/logs", file=sys.stderr)
                return 1
    except StopRequested:
        pass
    except (StackError, EmbeddedServerError) as exc:
        print(f"koprogo up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not interrupt the orderly stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping KoproGo Symbiose ...", flush=True)
        stack.stop()
        if receiver is not None:
            receiver.stop()
        print("stopped", flush=True)
    return 0


def _print_welcome(stack: Stack, data_dir: Path, models: list[ServedModel]) -> None:
    folder = folder_args(data_dir)
    print(f"\nKoproGo Symbiose is up: {stack.gateway_url}  (API docs: {stack.gateway_url}/docs)")
    print(f"data in {data_dir}, logs in {data_dir / 'logs'}")
    served = ", ".join([BUNDLED_MODEL_ID, *(m.model_id for m in models)])
    print(f"models served here: {served}")
    if not models:
        print(
            f"Note: the bundled {BUNDLED_MODEL_ID} (135M parameters) is a smoke test: it proves the path "
            "works, its answers are not useful.\nFor useful French and Dutch answers (4.9 GB, about 6 GB of "
            f"RAM): `{command_hint('models', 'pull', RECOMMENDED_MODEL_ID)}`, then "
            f"`{command_hint('up', *folder, '--model', RECOMMENDED_MODEL_ID)}`"
        )
    if note := quorum_note(data_dir, os.environ):
        print(note)
    if stack.dev_token:
        print(
            f"Authentication is on. The dev token (read+write for the demo copro {DEMO_COPRO_ID}, 30 days) is in "
            f"{dev_token_path(data_dir)}; more tokens: "
            f"`{command_hint('token', *folder, '--user', 'alice', '--copro', DEMO_COPRO_ID)}`"
        )
        print(chat_link_line(data_dir, stack.gateway_url, folder))
    else:
        print(
            f"Open the chat: {stack.gateway_url}/mcp-chat/ (sign in with a token of your identity provider)"
        )


def chat_link_line(data_dir: Path, gateway_url: str, folder: list[str]) -> str:
    """The welcome's line with a one-time link that opens the chat app signed in as the dev user."""
    try:
        url = dev_login_url(data_dir, gateway_url)
    except DevAuthError as exc:
        return f"Open the chat: {gateway_url}/mcp-chat/ (no sign-in link: {exc})"
    return (
        f"Open the chat: {url}\n"
        f"  (this link signs in once, within {LOGIN_CODE_TTL.total_seconds() / 60:g} minutes; a fresh one: `{command_hint('login-link', *folder)}`)"
    )


def quorum_note(data_dir: Path, environ: Mapping[str, str]) -> str | None:
    """What to do when the roster's nodes are too few owners for the grid's quorum, else None.

    An untrusted node's grid task is accepted when nodes of GRID_QUORUM (default 2) distinct owners
    agree (docs/grid-trust.md); the stack's own nodes are one owner (`local`), so alone their results
    are taken unchecked after GRID_OWNER_WAIT_S (paid into escrow, earning no trust).
    """
    try:
        quorum = int(environ.get("GRID_QUORUM") or DEFAULT_GRID_QUORUM)
        grants = parse_roster(roster_file(data_dir / "secrets" / "nats").read_text())
    except (OSError, ValueError):
        return None  # no roster (a NATS_URL server): nothing known of the nodes' owners
    owners = {grant.owner_of(node_id) for node_id, grant in grants.items()}
    if len(owners) >= quorum:
        return None
    return (
        f"Grid tasks are verified when nodes of {quorum} distinct owners agree (GRID_QUORUM); this stack's "
        f"nodes have {len(owners)} ({', '.join(sorted(owners))}), so their results are taken unchecked "
        "(paid into escrow, earning no trust). To verify them, join nodes of other owners "
        f"(`{command_hint('node', 'join', '--node-id', 'ID', '-m', BUNDLED_MODEL_ID, '--owner', 'NAME')}`)."
    )


def demo_curl(gateway_url: str, token_file: Path | None, body: dict[str, object]) -> str:
    """The curl line for a chat, as a user pastes it (the token read from its file, never printed)."""
    auth = f'-H "Authorization: Bearer $(cat {token_file})" ' if token_file else ""
    return (
        f"curl -s -X POST {gateway_url}/mcp/v1/chat {auth}-H 'Content-Type: application/json' "
        f"-d '{json.dumps(body, ensure_ascii=False)}'"
    )


def demo_body(model: str) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": DEMO_QUESTION}],
        "context": f"copro:{DEMO_COPRO_ID}",
        "max_tokens": DEMO_MAX_TOKENS,
    }


def _demo_chat(gateway_url: str, token: str | None, token_file: Path, model: str) -> str | None:
    """Send the demo chat and print its answer; its `traceparent` response header, if any."""
    body = demo_body(model)
    print(f"\n$ {demo_curl(gateway_url, token_file if token else None, body)}")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        # Longer than the gateway's own timeout, so its 504 arrives before ours.
        response = httpx.post(f"{gateway_url}/mcp/v1/chat", json=body, headers=headers, timeout=150)
        print(json.dumps(response.json(), indent=2, ensure_ascii=False), flush=True)
    except (httpx.HTTPError, ValueError) as exc:
        print(f"the demo chat failed ({exc!r}); the stack stays up, see the logs", file=sys.stderr)
        return None
    return response.headers.get("traceparent")


def _up_detached(args: argparse.Namespace, data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "koprogo.log"
    argv = [
        sys.executable,
        "-m",
        "koprogo_cli.main",
        "up",
        "--data-dir",
        str(data_dir),
        "--port",
        str(args.port),
    ]
    for spec in args.model:
        argv += ["--model", spec]
    if args.lan:
        argv.append("--lan")
    if args.no_demo:
        argv.append("--no-demo")
    if args.traces:
        argv.append("--traces")
    if args.site != "hub":
        argv += ["--site", args.site]
    for url in args.hub:
        argv += ["--hub", url]
    if args.leaf_port is not None:
        argv += ["--leaf-port", str(args.leaf_port)]
    offset = log.stat().st_size if log.exists() else 0  # only this run's lines count
    with open_private_log(log) as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300 + 600 * len(args.model)
    while time.monotonic() < deadline:
        with log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace")
        if proc.poll() is not None:
            # Exit 0 before ready: another `up` won the race and this one said so.
            print(
                lines.strip() if proc.returncode == 0 else f"koprogo up failed; see {log}:\n{lines.strip()}"
            )
            return proc.returncode
        if READY_LINE in lines:
            print(f"KoproGo Symbiose is up in the background (pid {proc.pid}): http://127.0.0.1:{args.port}")
            print(f"log: {log}; stop it with `{command_hint('down', *folder_args(data_dir))}`")
            print(
                f"the chat app: `{command_hint('login-link', *folder_args(data_dir))}` prints a link that opens it signed in"
            )
            return 0
        time.sleep(0.5)
    # Not ready in time: stop it (it stops what it started, in order) rather than leave it half up.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    print(f"koprogo up did not become ready in time and was stopped; see {log}", file=sys.stderr)
    return 1


def cmd_down(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    record = running_stack(data_dir)
    if record is None:
        if pids := leftovers(data_dir):
            print(f"stopping what an earlier stack left running (pids {', '.join(map(str, pids))}) ...")
            if still := terminate(pids):
                print(f"processes {', '.join(map(str, still))} did not stop within 20 s", file=sys.stderr)
                return 1
            print("KoproGo Symbiose stopped")
            return 0
        print(f"KoproGo Symbiose is not running on {data_dir}")
        return 0
    deadline = time.monotonic() + 5
    while record is not None and record.pid <= 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # a stack starting has not written its record yet
        record = running_stack(data_dir)
    if record is None:
        print("KoproGo Symbiose stopped")
        return 0
    if record.pid <= 0:  # never signal pid 0: that is our own process group
        print(f"a stack is starting or stopping on {data_dir}: run this again in a moment", file=sys.stderr)
        return 1
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while running_stack(data_dir) is not None:
        if time.monotonic() > deadline:
            print(f"process {record.pid} did not stop within 60 s", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print("KoproGo Symbiose stopped")
    return 0


def add_up_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up", help="start the whole stack (embedded NATS and PostgreSQL unless URLs are given)"
    )
    up.add_argument("--data-dir", help="where NATS, PostgreSQL and logs keep their data (default ./data)")
    up.add_argument("--port", type=int, default=GATEWAY_PORT, help=f"gateway port (default {GATEWAY_PORT})")
    up.add_argument(
        "-m",
        "--model",
        action="append",
        default=[],
        metavar="ID|PATH|ID=PATH",
        help="also serve this model, in an edge node of its own (repeat for several): a pulled model's id "
        f"(`koprogo models pull {RECOMMENDED_MODEL_ID}`), a .gguf file (served under its file name), or "
        "ID=PATH to serve a file under an id",
    )
    up.add_argument(
        "--lan",
        action="store_true",
        help="let edge nodes of other machines join (`koprogo node join`): the embedded NATS listens on every "
        "interface; only the stack's own nkeys get in, and it serves no monitoring port",
    )
    up.add_argument(
        "--site",
        choices=("hub", "building"),
        default="hub",
        help="hub (default): the whole stack; building: a copro's own stack (gateway, router, edge nodes) "
        "whose nats-server is a leaf node of the hub's and keeps answering when the line drops "
        "(its folder made at the hub by `koprogo building add`; docs/deploy.md)",
    )
    up.add_argument(
        "--hub",
        action="append",
        default=[],
        metavar="URL",
        help="with --site building: the hub's leaf listener, nats-leaf://HOST:7422 (repeat for several)",
    )
    up.add_argument(
        "--leaf-port",
        type=int,
        help="at a hub: listen for buildings' leaf links on this port (default 7422 once "
        "`koprogo building add` registered one)",
    )
    up.add_argument("--detach", action="store_true", help="run in the background; stop with `koprogo down`")
    up.add_argument("--no-demo", action="store_true", help="skip the demo chat once the stack is up")
    up.add_argument(
        "--traces",
        action="store_true",
        help=f"record every request's trace without Jaeger: a receiver on 127.0.0.1 (port {OTLP_HTTP_PORT} if "
        "free) takes every service's OpenTelemetry spans into <data>/traces (size-bounded); "
        "`koprogo trace TRACEPARENT` or `koprogo trace --last` prints one as a tree",
    )
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the stack running on the data folder")
    down.add_argument("--data-dir", help="the stack's data folder (default ./data)")
    down.set_defaults(func=cmd_down)
