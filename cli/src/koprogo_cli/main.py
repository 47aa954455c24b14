"""The `koprogo` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx

from koprogo_cli.client_commands import add_client_parsers, run_client_command
from koprogo_cli.dev_auth import (
    DEMO_COPRO_ID,
    DevAuthError,
    dev_token_path,
    jwt_secret_path,
    mint_local_token,
)
from koprogo_cli.embedded import EmbeddedServerError
from koprogo_cli.invocation import installed_version
from koprogo_cli.mcp_stdio import add_mcp_parser
from koprogo_cli.nats_auth import NatsAuthError, identities, node_user, render_authorization, render_user
from koprogo_cli.stack import NODE_PORT, Stack, StackError, cloud_deployment_ids, preferred_port
from koprogo_shared.catalogue import BUNDLED_MODEL_ID

DEMO_CHAT = {
    "model": BUNDLED_MODEL_ID,
    "messages": [{"role": "user", "content": "Bonjour, résume ce PV en une phrase."}],
    "context": f"copro:{DEMO_COPRO_ID}",
}


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived while the stack was starting."""


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("KOPROGO_DATA_DIR", "data")).resolve()


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    if args.detach:
        return _up_detached(args, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    pid_file = data_dir / "koprogo.pid"
    pid_file.write_text(str(os.getpid()))
    stack = Stack(data_dir, gateway_port=args.port, node_port=preferred_port(NODE_PORT))
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
        stack.wait_for_model(BUNDLED_MODEL_ID)
        print(f"\nKoproGo Symbiose is up: {stack.gateway_url}  (data in {data_dir}, logs in {data_dir}/logs)")
        if stack.dev_token:
            print(
                f"Authentication is on. Dev token (read+write, copro {DEMO_COPRO_ID}, 30 days) in "
                f"{dev_token_path(data_dir)}:\n{stack.dev_token}\n"
                "More tokens: koprogo token --user U --copro C --scopes mcp:read,mcp:write"
            )
        if not args.no_demo:
            _demo_chat(stack.gateway_url, stack.dev_token, dev_token_path(data_dir))
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
        pid_file.unlink(missing_ok=True)
        print("stopped", flush=True)
    return 0


READY_LINE = "Ctrl-C stops everything."


def _demo_chat(gateway_url: str, token: str | None, token_file: Path) -> None:
    auth = f'-H "Authorization: Bearer $(cat {token_file})" ' if token else ""
    print(
        f"\n$ curl -s -X POST {gateway_url}/mcp/v1/chat {auth}"
        f"-d '{json.dumps(DEMO_CHAT, ensure_ascii=False)}'"
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        # Longer than the gateway's own timeout, so its 504 arrives before ours.
        response = httpx.post(f"{gateway_url}/mcp/v1/chat", json=DEMO_CHAT, headers=headers, timeout=150)
        print(json.dumps(response.json(), indent=2, ensure_ascii=False), flush=True)
    except (httpx.HTTPError, ValueError) as exc:
        print(f"the demo chat failed ({exc!r}); the stack stays up, see the logs", file=sys.stderr)


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
    if args.no_demo:
        argv.append("--no-demo")
    offset = log.stat().st_size if log.exists() else 0  # only this run's lines count
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"koprogo up failed; see {log}", file=sys.stderr)
            return 1
        with log.open("rb") as f:
            f.seek(offset)
            if READY_LINE.encode() in f.read():
                print(
                    f"KoproGo Symbiose is up in the background (pid {proc.pid}): http://127.0.0.1:{args.port}"
                )
                print(f"log: {log}; stop with `koprogo down`")
                return 0
        time.sleep(0.5)
    print(f"koprogo up did not become ready in time; see {log}", file=sys.stderr)
    return 1


def _is_koprogo(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"koprogo" in cmdline


def cmd_down(args: argparse.Namespace) -> int:
    pid_file = _data_dir(args) / "koprogo.pid"
    if not pid_file.exists():
        print("KoproGo Symbiose is not running (no pid file)")
        return 0
    pid = int(pid_file.read_text())
    if not _is_koprogo(pid):
        pid_file.unlink(missing_ok=True)
        print("KoproGo Symbiose was not running (stale pid file removed)")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        print("KoproGo Symbiose was not running")
        return 0
    for _ in range(120):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("KoproGo Symbiose stopped")
            return 0
        time.sleep(0.5)
    print(f"process {pid} did not stop within 60 s", file=sys.stderr)
    return 1


def cmd_token(args: argparse.Namespace) -> int:
    """Mint a token with the stack's local secret (the dev counterpart of the platform's tokens)."""
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    data_dir = _data_dir(args)
    try:
        token = mint_local_token(
            data_dir, user=args.user, copros=args.copro, scopes=scopes, ttl=timedelta(hours=args.hours)
        )
    except (DevAuthError, ValueError) as exc:
        print(f"koprogo token: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(
        f"# signed with {jwt_secret_path(data_dir)}: user {args.user}, copros {', '.join(args.copro) or '-'}, "
        f"scopes {' '.join(scopes)}, valid {args.hours} h",
        file=sys.stderr,
    )
    return 0


def _keys_dir(args: argparse.Namespace) -> Path:
    return Path(args.keys_dir).resolve() if args.keys_dir else _data_dir(args) / "secrets" / "nats"


def cmd_nats_node_key(args: argparse.Namespace) -> int:
    """Mint (once) an edge node's nkey and print its `users` entry for the NATS server."""
    try:
        user, seed_file = node_user(_keys_dir(args), args.node_id, args.model)
    except NatsAuthError as exc:
        print(f"koprogo nats-node-key: {exc}", file=sys.stderr)
        return 2
    print(f"seed: {seed_file}")
    print(
        f"# On the node (copy the seed there, mode 0600): NATS_NKEY_SEED_FILE=<its path> NODE_ID={args.node_id}\n"
        "# Add this entry to `authorization { users = [...] }` in the NATS server's configuration\n"
        "# (deploy/nats/authorization.conf), then reload the server (nats-server --signal reload):"
    )
    print(render_user(user))
    return 0


def cmd_nats_config(args: argparse.Namespace) -> int:
    """Mint (once) every service's nkey and the given nodes', and write the `authorization` block."""
    nodes: dict[str, list[str]] = {}
    for item in args.node:
        node_id, _, model = item.partition("=")
        if not model:
            print(f"koprogo nats-config: --node {item!r}: use NODE_ID=MODEL", file=sys.stderr)
            return 2
        nodes.setdefault(node_id, []).append(model)
    keys_dir = _keys_dir(args)
    try:
        found = identities(keys_dir, nodes, cloud_deployment_ids())
    except (NatsAuthError, StackError) as exc:
        print(f"koprogo nats-config: {exc}", file=sys.stderr)
        return 2
    text = (
        "# Written by `koprogo nats-config`; included by deploy/nats/nats-server.conf.\n"
        + render_authorization(found.users)
    )
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    for name, seed_file in found.seed_files.items():
        user = "the operator's own (nats CLI: --nkey); give it to no service" if name == "admin" else name
        print(f"{user}: NATS_NKEY_SEED_FILE={seed_file}", file=sys.stderr)
    return 0


def _positive_hours(text: str) -> float:
    hours = float(text)
    if not 0 < hours <= 8760:
        raise argparse.ArgumentTypeError("between 0 and 8760 hours")
    return hours


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="koprogo", description="KoproGo Symbiose on one machine.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up", help="start the whole stack (embedded NATS and PostgreSQL unless URLs are given)"
    )
    up.add_argument("--data-dir", help="where NATS, PostgreSQL and logs keep their data (default ./data)")
    up.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    up.add_argument("--detach", action="store_true", help="run in the background; stop with `koprogo down`")
    up.add_argument("--no-demo", action="store_true", help="skip the demo chat once the stack is up")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop a stack started with `koprogo up --detach`")
    down.add_argument("--data-dir")
    down.set_defaults(func=cmd_down)
    add_client_parsers(sub)
    add_mcp_parser(sub)
    token = sub.add_parser("token", help="mint a token with the local secret of `koprogo up`")
    token.add_argument("--user", required=True, help="the user id (the token's sub)")
    token.add_argument(
        "--copro", action="append", default=[], help="a copro id the user belongs to (repeat for several)"
    )
    token.add_argument(
        "--scopes", default="mcp:read,mcp:write", help="comma-separated: mcp:read, mcp:write, mcp:admin"
    )
    token.add_argument(
        "--hours", type=_positive_hours, default=8, help="validity in hours (default 8, at most 8760)"
    )
    token.add_argument("--data-dir")
    token.set_defaults(func=cmd_token)
    keys_help = "where the nkey seeds live (default <data dir>/secrets/nats)"
    node_key = sub.add_parser(
        "nats-node-key",
        help="mint an edge node's NATS nkey and print the permissions entry for the NATS server",
    )
    node_key.add_argument("--node-id", required=True, help="the node's NODE_ID (its heartbeat subject)")
    node_key.add_argument(
        "--model", action="append", required=True, help="a model id the node serves (repeat for several)"
    )
    node_key.add_argument("--keys-dir", help=keys_help)
    node_key.add_argument("--data-dir")
    node_key.set_defaults(func=cmd_nats_node_key)
    config = sub.add_parser(
        "nats-config",
        help="mint the services' NATS nkeys (and nodes') and write the server's authorization block",
    )
    config.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NODE_ID=MODEL",
        help="an edge node and a model it serves (repeat for several); the cloud worker's deployments "
        "come from CLOUD_DEPLOYMENTS_FILE (or the defaults)",
    )
    config.add_argument("--out", default="-", help="the file to write (default: standard output)")
    config.add_argument("--keys-dir", help=keys_help)
    config.add_argument("--data-dir")
    config.set_defaults(func=cmd_nats_config)
    return parser


def main() -> None:
    try:
        try:
            code = run_client_command(build_parser().parse_args())
        finally:
            # Inside the try, so that a closed pipe surfaces here and not at interpreter exit;
            # also when argparse exits on its own (`koprogo --help | head -1`).
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`koprogo models --json | head -1`): nothing more to say. Python
        # flushes stdout again at exit; pointing it at devnull keeps that flush quiet too.
        # (The recipe of the Python docs' "Note on SIGPIPE".)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()
