"""The NATS side of `Stack.start`: the site (a hub, or a copro's building whose nats-server is a leaf
node of the hub's), the embedded nats-server with the stack's nkey identities, the streams declared
as the operator, the buildings' events sourced at a hub, the durability check of a server given by
NATS_URL, and the environment that hands each service its own nkey (and a building's gateway its site).

`StackNats` is a part of `Stack` (a mixin): its state is the stack's, declared below.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import nats.errors
from pydantic import ValidationError

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.nats_auth import identities, render_authorization
from koprogo_cli.nats_keys import HUB_LEAF_SEED, building_of, joined_nodes, registered_buildings, roster_file
from koprogo_cli.nats_permissions import ADMIN, NatsAuthError
from koprogo_cli.ports import free_port, preferred_port
from koprogo_cli.stack_settings import StackError, nats_monitor_port, nats_prof_port
from koprogo_shared import leaf_site
from koprogo_shared.durability import DurabilityError, Finding
from koprogo_shared.durability import check as check_durability
from koprogo_shared.kv_buckets import rate_limit_window_from
from koprogo_shared.nats_connection import NatsCredentialsError, connect_nats, declare_streams
from koprogo_shared.node_roster import DeviceProfile
from koprogo_shared.settings import EdgeFootprintSettings

# The owner of the nodes a stack runs itself, in the roster: one operator, so never a quorum alone.
OWN_NODES_OWNER = "local"


class StackNats:
    """The `Stack`'s NATS server and site. Its state is the stack's (declared here, set by `Stack`)."""

    data_dir: Path
    log: Callable[[str], None]
    lan: bool
    hub_urls: list[str]
    leaf_port: int | None
    building: str | None
    nats: EmbeddedNats | None
    nats_seed_files: dict[str, Path]
    cloud_deployments: list[str]
    device: DeviceProfile
    own_nodes: Callable[[], dict[str, list[str]]]

    def _site(self) -> str | None:
        """The copro of this folder's building (`--hub` given), None for a hub; StackError when the
        folder and the command line disagree."""
        keys_dir = self.data_dir / "secrets" / "nats"
        try:
            building = building_of(keys_dir)
        except NatsAuthError as exc:
            raise StackError(str(exc)) from None
        if self.hub_urls and building is None:
            raise StackError(
                f"{self.data_dir} is no building's folder: at the hub, `koprogo building add --copro ID "
                "--out FOLDER` makes one (its leaf key, content keys and signing secret); copy it here "
                "and start with `--data-dir FOLDER`"
            )
        if building is not None and not self.hub_urls:
            raise StackError(
                f"{self.data_dir} is copro {building}'s building: start it with `--site building --hub "
                "nats-leaf://HUB:7422`"
            )
        if building is not None and os.environ.get("NATS_URL"):
            raise StackError("a building runs its own nats-server (a leaf node of the hub's): unset NATS_URL")
        if building is not None:
            self.cloud_deployments = []  # served at the hub
        return building

    def _site_env(self) -> dict[str, str]:
        """A building's gateway: its id (the hub's cloud workers answer it on that subject) and
        where it reads its leaf link's state (/mcp/v1/site, the PWA's offline banner)."""
        if self.building is None:
            return {}
        assert self.nats is not None and self.nats.monitor_port is not None
        return {
            "GATEWAY_ID": leaf_site.building_gateway_id(self.building),
            "SITE": "building",
            "BUILDING_COPRO": self.building,
            "NATS_MONITOR_URL": f"http://127.0.0.1:{self.nats.monitor_port}",
        }

    def _leafnodes(self, keys_dir: Path) -> tuple[str | None, str]:
        """The embedded server's JetStream domain and `leafnodes` block: a building's remote to
        the hub, a hub's listener once it has buildings (or `--leaf-port`), else neither."""
        if self.building is not None:
            seed_file = keys_dir / HUB_LEAF_SEED
            try:
                seed = seed_file.read_text().strip()
            except OSError as exc:
                raise StackError(f"the building's leaf key {seed_file}: {exc}") from None
            try:
                remote = leaf_site.render_leaf_remote(self.hub_urls, seed)
            except leaf_site.LeafSiteError as exc:
                raise StackError(str(exc)) from None
            return leaf_site.building_domain(self.building), remote
        if self.leaf_port is None and not registered_buildings(keys_dir):
            return None, ""
        port = self.leaf_port or preferred_port(leaf_site.DEFAULT_LEAF_PORT)
        self.leaf_port = port
        # Buildings connect from their own lines: every interface, each with its own nkey (and the
        # permissions `leaf_site.leaf_link_permissions` gives it); no TLS here (docs/deploy.md).
        return leaf_site.HUB_DOMAIN, leaf_site.render_hub_listener("0.0.0.0", port)

    def _source_buildings(self, nats_url: str) -> None:
        """At a hub, each registered building's events taken into KOPROGO_EVENTS (as the operator)."""
        buildings = registered_buildings(self.data_dir / "secrets" / "nats") if self.nats_seed_files else []
        if not buildings:
            return

        async def sourcing() -> None:
            nc, js = await connect_nats(
                nats_url, "koprogo-building-sources", nkey_seed_file=self.nats_seed_files[ADMIN]
            )
            try:
                for copro in buildings:
                    await leaf_site.source_building(js, copro)
            finally:
                await nc.close()

        try:
            asyncio.run(asyncio.wait_for(sourcing(), 60))
        except (TimeoutError, OSError, ValueError, nats.errors.Error) as exc:
            raise StackError(
                f"sourcing the buildings' events at {nats_url}: {exc or type(exc).__name__}"
            ) from None
        self.log(
            f"buildings: {', '.join(buildings)} (leaf listener on port {self.leaf_port}; their events "
            "reach KOPROGO_EVENTS through KOPROGO_BUILDING_<copro>)"
        )

    def _start_nats(self) -> str:
        try:
            keys_dir = self.data_dir / "secrets" / "nats"
            # Other machines' nodes `koprogo node join` admitted, then this stack's own.
            # Its own nodes run with this environment's POWER_WATTS, INTENSITY_G_PER_KWH and
            # RENEWABLE_ATTESTED: their keys are declared with the same, no better.
            # They are one operator's (owner `local`) and run on this machine (`own_device`).
            own_footprint = EdgeFootprintSettings().footprint()
            stack_identities = identities(
                keys_dir,
                {**joined_nodes(keys_dir), **self.own_nodes()},
                self.cloud_deployments,
                node_footprints={node_id: own_footprint for node_id in self.own_nodes()},
                node_owners={node_id: OWN_NODES_OWNER for node_id in self.own_nodes()},
                node_devices={node_id: self.device for node_id in self.own_nodes()},
            )
        except ValidationError as exc:
            raise StackError(
                f"the edge nodes' energy (POWER_WATTS, INTENSITY_G_PER_KWH, RENEWABLE_ATTESTED): {exc}"
            ) from None
        except NatsAuthError as exc:
            raise StackError(f"NATS identities: {exc}") from None
        self.nats_seed_files = stack_identities.seed_files
        port = preferred_port(4222)
        domain, leafnodes = self._leafnodes(keys_dir)
        self.nats = EmbeddedNats(
            self.data_dir / "nats",
            port=port,
            # Monitoring off unless NATS_MONITOR_PORT asks (then on loopback, for /varz and
            # prometheus-nats-exporter): it answers anyone on the machine with the list of connections.
            # A building's gateway reads its leaf link there (/leafz), so a building always has it.
            monitor_port=nats_monitor_port(os.environ) or (free_port() if self.building else None),
            prof_port=nats_prof_port(os.environ, lan=self.lan),
            authorization=render_authorization(stack_identities.users),
            host="0.0.0.0" if self.lan else "127.0.0.1",
            jetstream_domain=domain,
            leafnodes=leafnodes,
        ).start()
        self.log(
            f"nats-server (embedded, JetStream on, fsync always, {len(stack_identities.users)} nkey "
            f"identities in {self.data_dir / 'secrets' / 'nats'}) at {self.nats.url}"
            + (
                f", monitoring at http://127.0.0.1:{self.nats.monitor_port}/varz"
                if self.nats.monitor_port is not None
                else ""
            )
            + (
                f", profiler at http://127.0.0.1:{self.nats.prof_port}/debug/pprof/"
                if self.nats.prof_port is not None
                else ""
            )
        )
        return self.nats.url

    def _check_durability(self, nats_url: str) -> None:
        """Refuse (or warn about) a NATS_URL server that may lose acknowledged events (durability)."""

        async def checking() -> Finding:
            nc, js = await connect_nats(nats_url, "koprogo-durability-check")
            try:
                return await check_durability(js, os.environ)
            finally:
                await nc.close()

        try:
            finding = asyncio.run(asyncio.wait_for(checking(), 30))
        except (DurabilityError, ValueError) as exc:
            raise StackError(str(exc)) from None
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise StackError(f"checking the NATS server at {nats_url}: {exc or type(exc).__name__}") from None
        self.log(f"NATS durability: {finding.durability.value} ({finding.detail})")

    def _declare_streams(self, nats_url: str) -> None:
        """The embedded server's streams, declared as the operator (`admin`) before any service.

        The ledger and the router may not create or update streams (nats_permissions): they wait for
        these. With a server given by NATS_URL the services connect without keys and declare
        the streams themselves, as on any development server.
        """
        if not self.nats_seed_files:
            return
        try:
            # The counters' bucket is kept for the gateway's window (its own RATE_LIMIT_WINDOW_S).
            window = rate_limit_window_from(os.environ)
            asyncio.run(
                asyncio.wait_for(
                    declare_streams(
                        nats_url, nkey_seed_file=self.nats_seed_files[ADMIN], rate_limit_window_s=window
                    ),
                    60,
                )
            )
        except (NatsCredentialsError, TimeoutError, OSError, ValueError, nats.errors.Error) as exc:
            raise StackError(
                f"declaring the NATS streams at {nats_url}: {exc or type(exc).__name__}"
            ) from None
        self.log("NATS streams and buckets declared as the operator (admin); the services only look them up")

    def _nats_identity(self, name: str) -> dict[str, str]:
        """The environment that hands a service its own nkey (nothing for a server given by NATS_URL)."""
        if not self.nats_seed_files:
            return {}
        # The router checks each heartbeat against the node roster beside the keys (nats_keys).
        seed_file = self.nats_seed_files[name]
        return {"NATS_NKEY_SEED_FILE": str(seed_file), "NODE_ROSTER_FILE": str(roster_file(seed_file.parent))}
