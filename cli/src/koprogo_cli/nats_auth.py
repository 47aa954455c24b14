"""NATS identities: one nkey per service and per edge node, and the server's `authorization` block.

`koprogo up` mints the keys once per data folder (`nats_keys`), writes the server's
`authorization` block from `identities()` and hands each service its seed file
(`NATS_NKEY_SEED_FILE`). `koprogo nats-config` and `koprogo nats-node-key` do the same for a
deployment (`deploy/nats/`).

What each identity may do is `nats_permissions`'s, its key and the node roster `nats_keys`'s;
this module puts them together: each identity's users entry (a node's grant written to the
roster, a building's leaf link at a hub, every inbox under the building's root in a building)
and the configuration text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from koprogo_cli.nats_keys import (
    building_of,
    building_seed_file,
    grid_scheduler_public_key,
    joined_copros,
    mint_seed,
    node_seed_file,
    public_key_of,
    record_grant,
    recorded_grant,
    registered_buildings,
)
from koprogo_cli.nats_permissions import (
    ADMIN,
    SERVICES,
    NatsAuthError,
    NatsUser,
    Permissions,
    check_node,
    cloud_permissions,
    gateway_permissions,
    grid_permissions,
    ledger_permissions,
    node_permissions,
    node_pools,
    own_inbox,
    router_permissions,
)
from koprogo_shared import leaf_site, subjects
from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.node_roster import DeviceProfile, NodeGrant


@dataclass(frozen=True, slots=True)
class Identities:
    users: list[NatsUser]
    # "ledger", "router", "gateway", "admin", "node:<id>" -> seed file
    seed_files: dict[str, Path] = field(default_factory=dict)


def node_user(
    keys_dir: Path,
    node_id: str,
    models: Sequence[str],
    copros: Sequence[str] = (),
    footprint: EdgeFootprint | None = None,
    owner: str | None = None,
    device: DeviceProfile | None = None,
) -> tuple[NatsUser, Path]:
    """A node's identity: its seed file (minted once) and its users entry, its grant in the roster.

    `copros`: the copros whose own pool it belongs to (their work only); none: the shared pool.
    `footprint`: the energy its operator declares (its heartbeats may claim no better); None
    keeps what the roster holds for it, else `co2`'s defaults.
    `owner`: the operator running it (a grid task's replicas go to distinct owners); None keeps
    the roster's, else the node id. `device`: its hardware and place (Proof of Green's yardstick);
    None keeps the roster's, else `DeviceProfile`'s defaults. The roster also records the node's
    public key, which signs its grid reports.
    """
    check_node(node_id, models)
    pools = node_pools(copros)
    seed_file = node_seed_file(keys_dir, node_id)
    public_key = mint_seed(seed_file)
    recorded = recorded_grant(keys_dir, node_id)
    if footprint is None:
        footprint = recorded.footprint if recorded is not None else EdgeFootprint()
    if owner is None:
        owner = recorded.owner_of(node_id) if recorded is not None else node_id
    if device is None:
        device = recorded.device if recorded is not None else DeviceProfile()
    if device.idle_watts > footprint.power_watts:
        # Its declared-energy attestations (power x time) would all fall below idle x time.
        raise NatsAuthError(
            f"node {node_id}: an idle draw of {device.idle_watts:g} W above its power under load "
            f"({footprint.power_watts:g} W) cannot be: declare both (--idle-watts and --power-watts; for "
            "`koprogo up`'s own nodes IDLE_WATTS and POWER_WATTS)"
        )
    grant = NodeGrant(frozenset(models), frozenset(pools), footprint, public_key, owner, device)
    record_grant(keys_dir, node_id, grant)
    label = f"edge node {node_id}: {', '.join(models)} (pools {', '.join(pools)})"
    return NatsUser(label, public_key, node_permissions(public_key, node_id, models, copros)), seed_file


def _under_inbox_root(user: NatsUser, root: str) -> NatsUser:
    """`user` with its inbox (`_INBOX.<key>.>`) moved under `root`."""
    if user.permissions is None:
        return user
    own, moved = own_inbox(user.public_key), f"{subjects.inbox_prefix(user.public_key, root)}.>"
    subscribe = tuple(moved if subject == own else subject for subject in user.permissions.subscribe)
    return replace(user, permissions=replace(user.permissions, subscribe=subscribe))


def building_user(keys_dir: Path, copro_id: str) -> NatsUser:
    """At the hub: a building's leaf link, its seed minted once (`leaf_site.leaf_link_permissions`)."""
    rules = leaf_site.leaf_link_permissions(copro_id)
    public_key = mint_seed(building_seed_file(keys_dir, copro_id))
    return NatsUser(
        f"leaf link of copro {copro_id}'s building", public_key, Permissions(rules.publish, rules.subscribe)
    )


def identities(
    keys_dir: Path,
    nodes: Mapping[str, Sequence[str]],
    cloud_deployments: Sequence[str] = (),
    node_copros: Mapping[str, Sequence[str]] | None = None,
    node_footprints: Mapping[str, EdgeFootprint] | None = None,
    node_owners: Mapping[str, str] | None = None,
    node_devices: Mapping[str, DeviceProfile] | None = None,
) -> Identities:
    """The services', the operator's and these nodes' identities, keys minted where missing.

    `cloud_deployments`: the deployment ids the cloud worker may serve (its work subjects).
    `node_copros`: per node, the copros whose pool it belongs to; a node not named there keeps
    what `koprogo node join --copro` recorded, else the shared pool.
    `node_footprints`: per node, the energy declared for it; a node not named there keeps the
    roster's (as `koprogo node join` declared it), else the defaults.
    `node_owners`, `node_devices`: the same for each node's owner and device (`node_user`).
    The grid scheduler's and the ledger's public keys are written beside their seeds (`public_key_of`).
    """
    copros_of = {**joined_copros(keys_dir), **(node_copros or {})}
    rules: dict[str, Callable[[str], Permissions]] = {
        "ledger": ledger_permissions,
        "router": router_permissions,
        "gateway": gateway_permissions,
        "cloud": lambda public_key: cloud_permissions(public_key, cloud_deployments),
        "grid": grid_permissions,
    }
    found = Identities(users=[])
    for service in SERVICES:
        seed_file = keys_dir / f"{service}.nk"
        public_key = mint_seed(seed_file)
        found.users.append(NatsUser(service, public_key, rules[service](public_key)))
        found.seed_files[service] = seed_file
    # Public keys others check signatures with: the scheduler's (assignments) and the ledger's
    # (the token ledger's signed heads, which the ledger signs with its NATS seed).
    grid_scheduler_public_key(keys_dir)
    public_key_of(keys_dir, "ledger")
    admin_seed = keys_dir / f"{ADMIN}.nk"
    found.users.append(NatsUser("operator (admin): given to no service", mint_seed(admin_seed), None))
    found.seed_files[ADMIN] = admin_seed
    for node_id, models in nodes.items():
        user, seed_file = node_user(
            keys_dir,
            node_id,
            models,
            copros_of.get(node_id, ()),
            (node_footprints or {}).get(node_id),
            (node_owners or {}).get(node_id),
            (node_devices or {}).get(node_id),
        )
        found.users.append(user)
        found.seed_files[f"node:{node_id}"] = seed_file
    # At the hub, each registered building's leaf link; in a building, every identity's inbox
    # under the building's root.
    found.users.extend(building_user(keys_dir, copro) for copro in registered_buildings(keys_dir))
    if (copro := building_of(keys_dir)) is not None:
        root = leaf_site.building_inbox_root(copro)
        found.users[:] = [_under_inbox_root(user, root) for user in found.users]
    return found


def _allow(subjects_: Sequence[str], indent: str) -> str:
    items = "".join(f"{indent}  {json.dumps(s)}\n" for s in subjects_)
    return f"{{ allow: [\n{items}{indent}] }}"


def render_user(user: NatsUser, indent: str = "") -> str:
    """One `users` entry, in nats-server's configuration syntax (subjects quoted: `$` is literal)."""
    label = re.sub(r"[^\x20-\x7e]", "?", user.label)
    lines = [f"{indent}# {label}", f"{indent}{{", f"{indent}  nkey: {json.dumps(user.public_key)}"]
    if user.permissions is not None:
        inner = indent + "    "
        lines += [
            f"{indent}  permissions: {{",
            f"{inner}publish: {_allow(user.permissions.publish, inner)}",
            f"{inner}subscribe: {_allow(user.permissions.subscribe, inner)}",
            # A map, not `true`: nats-server's own `allow_responses: true` is max 1 response, no expiry.
            *([f"{inner}allow_responses: true"] if user.permissions.allow_responses else []),
            f"{indent}  }}",
        ]
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def render_authorization(users: Sequence[NatsUser]) -> str:
    """The `authorization` block: only these keys connect, each with its permissions."""
    entries = "\n".join(render_user(user, "    ") for user in users)
    return f"authorization {{\n  users = [\n{entries}\n  ]\n}}\n"
