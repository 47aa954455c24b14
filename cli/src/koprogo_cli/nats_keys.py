"""NATS keys and rosters on disk: the seeds, the public keys handed out, the node roster, a building's site.

`koprogo up` mints the keys once per data folder (`<data>/secrets/nats/`, seeds mode 0600);
`koprogo nats-config` and `koprogo nats-node-key` do the same for a deployment (`deploy/nats/`).
A node of another machine that `koprogo node join` admitted is recorded beside them
(`nodes/<id>.json`); at a hub, each building's leaf link has its seed (`buildings/<copro>.nk`),
and a building's folder names the copro it serves (`site.json`).

What a node's key was minted for is also written to the node roster, `<keys>/roster.json`
(`koprogo_shared.node_roster`): the server tells no subscriber who published, so the router
checks each heartbeat's models (and pools) against it (`NODE_ROSTER_FILE`). For the grid the
roster also holds each node's public key (its grid signatures), its owner and its device; and the
grid identity's public key is written beside its seed (`grid.pub`): nodes check the scheduler's
signature on each assignment with it (`GRID_SCHEDULER_PUBLIC_KEY`, docs/grid-trust.md). The
ledger's (`ledger.pub`) checks the token ledger's signed heads (`koprogo ledger verify --ledger-key`).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import nkeys

from koprogo_cli.nats_permissions import GRID_SCHEDULER, NatsAuthError, check_node, node_pools
from koprogo_shared import leaf_site
from koprogo_shared.nats_connection import nkey_public_key
from koprogo_shared.node_roster import NodeGrant, parse_roster, render_roster


def mint_seed(path: Path) -> str:
    """The public key of the user seed at `path`, minted first (mode 0600) when there is none."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    if not path.exists():
        seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(seed + b"\n")
    path.chmod(0o600)  # also tightens a seed that was copied in
    return nkey_public_key(path)


def node_seed_file(keys_dir: Path, node_id: str) -> Path:
    return keys_dir / "nodes" / f"{node_id}.nk"


def record_joined_node(
    keys_dir: Path, node_id: str, models: Sequence[str], copros: Sequence[str] = ()
) -> None:
    """Remember a node of another machine (`koprogo node join`): the stack admits it at every start."""
    check_node(node_id, models)
    node_pools(copros)
    path = keys_dir / "nodes" / f"{node_id}.json"
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    path.write_text(json.dumps({"models": list(models), "copros": list(copros)}) + "\n")


def joined_copros(keys_dir: Path) -> dict[str, list[str]]:
    """The copros whose pool each joined node belongs to (none: the shared pool)."""
    found: dict[str, list[str]] = {}
    for path in sorted((keys_dir / "nodes").glob("*.json")):
        try:
            found[path.stem] = [str(c) for c in json.loads(path.read_text()).get("copros", [])]
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # joined_nodes() names the broken record
    return found


def joined_nodes(keys_dir: Path) -> dict[str, list[str]]:
    """The nodes `koprogo node join` admitted, with their models."""
    found: dict[str, list[str]] = {}
    for path in sorted((keys_dir / "nodes").glob("*.json")):
        try:
            models = json.loads(path.read_text())["models"]
        except (OSError, ValueError, KeyError, TypeError):
            raise NatsAuthError(
                f"{path} is not a joined node's record: remove it, or join the node again"
            ) from None
        found[path.stem] = [str(m) for m in models]
    return found


def roster_file(keys_dir: Path) -> Path:
    """The node roster beside the keys: what each node's key was minted for."""
    return keys_dir / "roster.json"


def _recorded_grants(keys_dir: Path) -> dict[str, NodeGrant]:
    path = roster_file(keys_dir)
    try:
        return parse_roster(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise NatsAuthError(f"{path} is not a node roster: remove it, it is written again") from None


def recorded_grant(keys_dir: Path, node_id: str) -> NodeGrant | None:
    """A node's entry in the roster, None when it has none."""
    return _recorded_grants(keys_dir).get(node_id)


def public_key_of(keys_dir: Path, identity: str) -> str:
    """An identity's public nkey (its seed minted once), also written to `<keys>/<identity>.pub`,
    so that a deployment hands it out without the seed (deploy/compose, deploy/k8s)."""
    public_key = mint_seed(keys_dir / f"{identity}.nk")
    public_file = keys_dir / f"{identity}.pub"
    if not public_file.exists() or public_file.read_text().strip() != public_key:
        partial = public_file.with_suffix(".pub.tmp")
        partial.write_text(public_key)  # no newline: a Kubernetes secretKeyRef hands the bytes as they are
        partial.replace(public_file)
    return public_key


def grid_scheduler_public_key(keys_dir: Path) -> str:
    """The grid scheduler's public nkey (`<keys>/grid.pub`): nodes are told it
    (`GRID_SCHEDULER_PUBLIC_KEY`) and run only the assignments it signed."""
    return public_key_of(keys_dir, GRID_SCHEDULER)


def record_grant(keys_dir: Path, node_id: str, grant: NodeGrant) -> None:
    """Write (or replace) a node's entry in the roster, the others kept."""
    path = roster_file(keys_dir)
    grants = _recorded_grants(keys_dir)
    if grants.get(node_id) == grant:
        return
    grants[node_id] = grant
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    # Written whole then renamed: a router reading it never sees half a file.
    partial = path.with_suffix(".json.tmp")
    partial.write_text(render_roster(grants))
    partial.replace(path)


# A building's site file beside its keys (`koprogo building add` writes it into the building's
# folder): the copro it serves. Its services then take their replies under the building's inbox
# root (`leaf_site.building_inbox_root`), which the hub may answer over the leaf link.
SITE_FILE = "site.json"
# In a building's folder: the seed of its leaf link to the hub (a copy of the hub's
# `buildings/<copro>.nk`, made by `koprogo building add`).
HUB_LEAF_SEED = "hub-leaf.nk"


def building_seed_file(keys_dir: Path, copro_id: str) -> Path:
    """At the hub: the seed of a building's leaf link (`koprogo building add`)."""
    leaf_site.building_domain(copro_id)  # refuses an id that cannot name a building
    return keys_dir / "buildings" / f"{copro_id}.nk"


def registered_buildings(keys_dir: Path) -> list[str]:
    """At the hub: the copros whose building `koprogo building add` registered."""
    return sorted(path.stem for path in (keys_dir / "buildings").glob("*.nk"))


def write_building_site(keys_dir: Path, copro_id: str) -> None:
    """In a building's folder: the copro it serves (read by `building_of`)."""
    leaf_site.building_domain(copro_id)
    keys_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    (keys_dir / SITE_FILE).write_text(json.dumps({"building_of": copro_id}) + "\n")
    (keys_dir / SITE_FILE).chmod(0o600)  # beside the seeds, as private as they are


def building_of(keys_dir: Path) -> str | None:
    """The copro this folder's building serves, or None for a hub (no site file)."""
    path = keys_dir / SITE_FILE
    try:
        copro = json.loads(path.read_text())["building_of"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise NatsAuthError(
            f"{path} is not a building's site file: write it again with `koprogo building add`"
        ) from None
    leaf_site.building_domain(str(copro))
    return str(copro)
