"""`koprogo building add`: at the hub, register a copro's building and make the folder it starts from.

A building (docs/building-offline.md, docs/deploy.md) runs `koprogo up --site building --hub
nats-leaf://HUB:7422 --data-dir FOLDER` on the copro's own Pi. What it needs from the hub is in
FOLDER, made here:

    secrets/nats/hub-leaf.nk   its leaf link's seed (the hub's user: `leaf_site.leaf_link_permissions`)
    secrets/nats/site.json     the copro it serves
    secrets/content-keys       the hub's content keys: the hub's ledger opens what the building sealed
    secrets/jwt-secret         the hub's signing secret, when the hub signs its own tokens: the
                               building verifies members' tokens without the line

Every file is private (0600, folders 0700): FOLDER is a secret to carry to the building, not to
mail. The hub takes the building's events once it restarts (`koprogo down`, `koprogo up`): its
nats-server then listens for leaf links (port 7422, `--leaf-port`) and its KOPROGO_EVENTS sources
the building's inbox.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from koprogo_cli.dev_auth import ensure_jwt_secret, jwt_secret_path, operator_verifier
from koprogo_cli.instance import data_dir_of, folder_args, running_stack
from koprogo_cli.invocation import command_hint
from koprogo_cli.nats_auth import (
    HUB_LEAF_SEED,
    NatsAuthError,
    building_of,
    building_seed_file,
    mint_seed,
    write_building_site,
)
from koprogo_cli.secrets import content_keys_path, ensure_content_keyring
from koprogo_shared import leaf_site


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
    _copy_private(content_keys_path(hub_dir), written[1])
    if not operator_verifier():  # the hub signs its own tokens: the building checks them alike
        ensure_jwt_secret(hub_dir, environ={})
        _copy_private(jwt_secret_path(hub_dir), jwt_secret_path(out))
        written.append(jwt_secret_path(out))
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
        print("  (the hub's gateway verifies with JWT_SECRET_FILE or JWKS_URL: give the building the same)")
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
