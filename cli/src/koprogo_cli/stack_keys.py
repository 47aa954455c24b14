"""The keys `koprogo up` hands its services: the content keys (ledger and gateway) and the grid
scheduler's signing seed with the public key every node checks assignments against."""

from __future__ import annotations

from pathlib import Path

from koprogo_cli.nats_keys import grid_scheduler_public_key
from koprogo_cli.nats_permissions import GRID_SCHEDULER
from koprogo_cli.secrets import ensure_content_keyring
from koprogo_cli.stack_settings import StackError
from koprogo_shared.content_crypto import ContentKeyError
from koprogo_shared.nats_connection import NatsCredentialsError
from koprogo_shared.node_roster import DeviceProfile


def content_keys_env(data_dir: Path) -> dict[str, str]:
    """The ledger's and the gateway's content keys: the operator's, or <data>/secrets/content-keys."""
    try:
        return ensure_content_keyring(data_dir)
    except ContentKeyError as exc:
        raise StackError(f"content keys: {exc}") from None


def grid_signing_env(data_dir: Path, device: DeviceProfile) -> tuple[dict[str, str], dict[str, str]]:
    """The scheduler's signing seed, and what every node the stack starts is told: the scheduler's
    public key (it runs only assignments signed with it) and its device class (its attestations')."""
    keys_dir = data_dir / "secrets" / "nats"
    try:
        public_key = grid_scheduler_public_key(keys_dir)
    except (OSError, NatsCredentialsError) as exc:
        raise StackError(f"the grid scheduler's signing key in {keys_dir}: {exc}") from None
    scheduler = {"GRID_SIGNING_SEED_FILE": str(keys_dir / f"{GRID_SCHEDULER}.nk")}
    nodes = {"GRID_SCHEDULER_PUBLIC_KEY": public_key, "DEVICE_CLASS": device.device_class}
    return scheduler, nodes
