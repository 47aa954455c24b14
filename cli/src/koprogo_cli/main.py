"""The `koprogo` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

from koprogo_cli.building_command import add_building_parsers
from koprogo_cli.client_commands import add_client_parsers, run_client_command
from koprogo_cli.dev_auth import (
    DevAuthError,
    jwt_secret_path,
    mint_local_token,
)
from koprogo_cli.instance import data_dir_of
from koprogo_cli.invocation import installed_version
from koprogo_cli.ledger_commands import add_ledger_parsers
from koprogo_cli.login_link import add_login_link_parser
from koprogo_cli.mcp_stdio import add_mcp_parser
from koprogo_cli.model_commands import local_models_command
from koprogo_cli.nats_auth import identities, node_user, render_authorization, render_user
from koprogo_cli.nats_keys import grid_scheduler_public_key, public_key_of, recorded_grant
from koprogo_cli.nats_permissions import NODE_ID, NatsAuthError
from koprogo_cli.node_footprint import (
    DeclarationError,
    add_footprint_args,
    add_grid_args,
    declared_device,
    declared_footprint,
    device_env,
    footprint_env,
)
from koprogo_cli.node_join import add_node_parser
from koprogo_cli.stack import StackError, cloud_deployment_ids
from koprogo_cli.task_commands import add_task_parsers
from koprogo_cli.trace_commands import add_trace_parser
from koprogo_cli.up_command import add_up_parsers


def cmd_token(args: argparse.Namespace) -> int:
    """Mint a token with the stack's local secret (the dev counterpart of the platform's tokens)."""
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    data_dir = data_dir_of(args)
    try:
        token = mint_local_token(
            data_dir,
            user=args.user,
            copros=args.copro,
            scopes=scopes,
            ttl=timedelta(hours=args.hours),
            nodes=args.node,
        )
    except (DevAuthError, ValueError) as exc:
        print(f"koprogo token: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(
        f"# signed with {jwt_secret_path(data_dir)}: user {args.user}, copros {', '.join(args.copro) or '-'}, "
        f"scopes {' '.join(scopes)}"
        + (f", operator of nodes {', '.join(dict.fromkeys(args.node))}" if args.node else "")
        + f", valid {args.hours} h",
        file=sys.stderr,
    )
    return 0


def _node_id(text: str) -> str:
    if not NODE_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a node id is 1-64 letters, digits, '.', '-' or '_'")
    return text


def _keys_dir(args: argparse.Namespace) -> Path:
    return Path(args.keys_dir).resolve() if args.keys_dir else data_dir_of(args) / "secrets" / "nats"


def cmd_nats_node_key(args: argparse.Namespace) -> int:
    """Mint (once) an edge node's nkey and print its `users` entry for the NATS server."""
    try:
        keys_dir = _keys_dir(args)
        user, seed_file = node_user(
            keys_dir,
            args.node_id,
            args.model,
            args.copro,
            declared_footprint(args),
            args.owner,
            declared_device(args),
        )
        grant = recorded_grant(keys_dir, args.node_id)
        scheduler_key = grid_scheduler_public_key(keys_dir)
    except (NatsAuthError, DeclarationError) as exc:
        print(f"koprogo nats-node-key: {exc}", file=sys.stderr)
        return 2
    assert grant is not None  # node_user recorded it
    print(f"seed: {seed_file}")
    print(f"# owner {grant.owner_of(args.node_id)}, public key {user.public_key}")
    print(
        f"# On the node (copy the seed there, mode 0600): NATS_NKEY_SEED_FILE=<its path> NODE_ID={args.node_id}"
        + (f" NODE_COPROS='{json.dumps(args.copro)}'" if args.copro else "")
        + f" {footprint_env(grant.footprint)} {device_env(grant.device)}"
        + f" GRID_SCHEDULER_PUBLIC_KEY={scheduler_key}"
        + "\n"
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
    copros: dict[str, list[str]] = {}
    for item in args.node_copro:
        node_id, _, copro = item.partition("=")
        if not copro or node_id not in nodes:
            print(
                f"koprogo nats-config: --node-copro {item!r}: use NODE_ID=COPRO_ID of a --node",
                file=sys.stderr,
            )
            return 2
        copros.setdefault(node_id, []).append(copro)
    keys_dir = _keys_dir(args)
    try:
        found = identities(keys_dir, nodes, cloud_deployment_ids(), copros)
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
    print(
        f"every node: GRID_SCHEDULER_PUBLIC_KEY={grid_scheduler_public_key(keys_dir)} "
        f"(also in {keys_dir / 'grid.pub'})",
        file=sys.stderr,
    )
    print(
        f"the token ledger's heads are signed with {public_key_of(keys_dir, 'ledger')} ({keys_dir / 'ledger.pub'}): "
        "publish it, members check exports with `koprogo ledger verify --export FILE --ledger-key KEY`",
        file=sys.stderr,
    )
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
    add_up_parsers(sub)
    add_building_parsers(sub)
    add_client_parsers(sub)
    add_task_parsers(sub)
    add_mcp_parser(sub)
    add_node_parser(sub)
    add_ledger_parsers(sub)
    add_login_link_parser(sub)
    add_trace_parser(sub)
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
    token.add_argument(
        "--node",
        action="append",
        default=[],
        type=_node_id,
        metavar="NODE_ID",
        help="a grid node the user operates (repeatable; claim `nodes`): they see its trust and balance",
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
    node_key.add_argument(
        "--copro",
        action="append",
        default=[],
        help="a copro whose own pool the node belongs to: it takes that copro's work only (repeat for "
        "several; default: the shared pool, work of every copro whose policy is not edge_only)",
    )
    add_footprint_args(node_key)
    add_grid_args(node_key)
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
    config.add_argument(
        "--node-copro",
        action="append",
        default=[],
        metavar="NODE_ID=COPRO_ID",
        help="put a --node in that copro's own pool instead of the shared one (repeat for several)",
    )
    config.add_argument("--out", default="-", help="the file to write (default: standard output)")
    config.add_argument("--keys-dir", help=keys_help)
    config.add_argument("--data-dir")
    config.set_defaults(func=cmd_nats_config)
    return parser


def main() -> None:
    try:
        try:
            local = local_models_command(sys.argv[1:])  # `models pull|list|rm`: the node's model manager
            code = local if local is not None else run_client_command(build_parser().parse_args())
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
