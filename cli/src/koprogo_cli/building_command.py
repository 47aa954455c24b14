"""`koprogo building add`: at the hub, register a copro's building and make the folder it starts from.

A building (docs/building-offline.md, docs/deploy.md) runs `koprogo up --site building --hub
nats-leaf://HUB:7422 --data-dir FOLDER` on the copro's own Pi. What it needs from the hub is in
FOLDER, made here:

    secrets/nats/hub-leaf.nk   its leaf link's seed (the hub's user: `leaf_site.leaf_link_permissions`)
    secrets/nats/site.json     the copro it serves
    secrets/content-keys       a content key of the building's own, which the hub's keyring gets
                               too (not as its current key): the hub's ledger opens what the
                               building's gateway sealed, the building opens nothing of the hub's

The building signs its members' tokens with a secret of its own, made at its first start
(`koprogo token --data-dir FOLDER`, `koprogo login-link --data-dir FOLDER`): a building someone
took apart cannot sign tokens the hub accepts. (With an identity provider, both sides verify its
public keys, `JWKS_URL`.) Every file is private (0600, folders 0700): FOLDER is a secret to carry
to the building, not to mail. The hub takes the building's events once it restarts (`koprogo down`, `koprogo up`): its
nats-server then listens for leaf links (port 7422, `--leaf-port`) and its KOPROGO_EVENTS sources
the building's inbox.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from koprogo_cli.dev_auth import operator_verifier
from koprogo_cli.instance import data_dir_of, folder_args, running_stack
from koprogo_cli.invocation import command_hint
from koprogo_cli.nats_keys import (
    HUB_LEAF_SEED,
    building_of,
    building_seed_file,
    mint_seed,
    write_building_site,
)
from koprogo_cli.nats_permissions import NatsAuthError
from koprogo_cli.secrets import add_reading_key, content_keys_path, ensure_content_keyring
from koprogo_shared import leaf_site
from koprogo_shared.content_crypto import create_keys_file


class BuildingError(RuntimeError):
    """The building cannot be registered as asked; the message says why and what to do."""


def _copy_private(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(0o600)


def add_building(hub_dir: Path, copro_id: str, out: Path) -> list[Path]:
    """Register `copro_id`'s building at the hub whose folder is `hub_dir` and make its folder `out`;
    the files written there."""
    try:
        leaf_site.building_domain(copro_id)
    except leaf_site.LeafSiteError as exc:
        raise BuildingError(str(exc)) from None
    keys_dir = hub_dir / "secrets" / "nats"
    try:
        if building_of(keys_dir) is not None:
            raise BuildingError(f"{hub_dir} is a building's folder: register buildings at the hub")
    except NatsAuthError as exc:
        raise BuildingError(str(exc)) from None
    if out.resolve() == hub_dir.resolve():
        raise BuildingError("--out must be another folder than the hub's")
    out_keys = out / "secrets" / "nats"
    if (out_keys / HUB_LEAF_SEED).exists():
        raise BuildingError(f"{out} already holds a building: remove it first, or choose another --out")
    seed_file = building_seed_file(keys_dir, copro_id)
    mint_seed(seed_file)
    ensure_content_keyring(hub_dir, environ={})
    written = [out_keys / HUB_LEAF_SEED, content_keys_path(out)]
    for folder in (out, out / "secrets", out_keys):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
    _copy_private(seed_file, written[0])
    create_keys_file(content_keys_path(out))
    add_reading_key(content_keys_path(hub_dir), content_keys_path(out))
    write_building_site(out_keys, copro_id)
    written.append(out_keys / "site.json")
    return written


def cmd_building_add(args: argparse.Namespace) -> int:
    hub_dir = data_dir_of(args)
    out = Path(args.out)
    try:
        written = add_building(hub_dir, args.copro, out)
    except (BuildingError, OSError) as exc:
        print(f"koprogo building add: {exc}", file=sys.stderr)
        return 1
    print(f"copro {args.copro}'s building registered at the hub {hub_dir}; its folder {out}:")
    for path in written:
        print(f"  {path}")
    if operator_verifier():
        print("  (the hub's gateway verifies with JWKS_URL: start the building with the same JWKS_URL)")
    else:
        print(
            "The building signs its members' tokens itself: once it is up, "
            f"`{command_hint('token', '--data-dir', str(out), '--user', 'ID', '--copro', args.copro)}`"
        )
    print(
        f"Carry {out} to the building privately (it holds secrets). There: "
        f"`{command_hint('up', '--site', 'building', '--hub', 'nats-leaf://HUB_ADDRESS:7422', '--data-dir', str(out))}`"
    )
    if running_stack(hub_dir) is not None:
        print(
            "The hub is running: restart it to listen for the building and take its events "
            f"(`{command_hint('down', *folder_args(hub_dir))}` then `{command_hint('up', *folder_args(hub_dir))}`)"
        )
    return 0


def add_building_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    building = sub.add_parser("building", help="a copro's building that keeps working offline (at the hub)")
    actions = building.add_subparsers(dest="building_command", required=True)
    add = actions.add_parser(
        "add", help="register a copro's building at this hub and write the folder it starts from"
    )
    add.add_argument("--copro", required=True, help="the copro the building serves")
    add.add_argument("--out", required=True, help="the building's folder to write (carry it to the building)")
    add.add_argument("--data-dir", help="the hub's data folder (default ./data)")
    add.set_defaults(func=cmd_building_add)
