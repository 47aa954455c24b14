"""The settings base every service extends (pydantic-settings, from the environment)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from koprogo_shared import co2

if TYPE_CHECKING:
    from koprogo_shared.content_crypto import Keyring


class ServiceSettings(BaseSettings):
    """Common settings. Environment variables use the field name in upper case (`NATS_URL`)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    # This identity's nkey (a user seed file, mode 0600); unset: connect without credentials.
    nats_nkey_seed_file: Path | None = None
    # Where this identity's replies arrive: `<root>.<public key>.>` (`subjects.inbox_prefix`).
    # A building's services take `_INBOX.building-<copro>` (`leaf_site.building_inbox_root`), so the
    # hub may send its answers (JetStream acks of cloud work) over the leaf link to them alone.
    nats_inbox_root: str = "_INBOX"
    log_level: str = "INFO"
    ops_host: str = "127.0.0.1"
    ops_port: int = 0  # /health, /ready and /metrics; 0 disables the ops server

    @field_validator("nats_nkey_seed_file", mode="before")
    @classmethod
    def _no_seed_file_when_empty(cls, value: object) -> object:
        return None if value == "" else value


class ContentKeySettings(ServiceSettings):
    """For services that seal or open stored message contents (`koprogo_shared.content_crypto`).

    `CONTENT_KEYS_FILE` (a keys file, as `koprogo up` writes) or `CONTENT_KEYS`
    (`kid:base64key,...`); `CONTENT_KEY_ID` picks the current key (default: the last listed).
    """

    content_keys: SecretStr | None = None
    content_keys_file: Path | None = None
    content_key_id: str | None = None

    @field_validator("content_keys", "content_keys_file", "content_key_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def content_keyring(self) -> Keyring:
        """The keyring; raises `ContentKeyError` with what to set when it is missing or malformed."""
        from koprogo_shared.content_crypto import load_keyring  # imported here: edge nodes never need it

        keys = self.content_keys.get_secret_value() if self.content_keys is not None else None
        return load_keyring(keys, self.content_key_id, self.content_keys_file)


class EdgeFootprintSettings(BaseSettings):
    """What an edge node declares about its energy: POWER_WATTS, INTENSITY_G_PER_KWH, RENEWABLE_ATTESTED.

    The node announces it in its heartbeats; the operator declares the same when minting the
    node's key (`koprogo nats-node-key --power-watts ...`, `koprogo up` for its own nodes from
    these variables), and routers refuse a heartbeat claiming less than that (`node_registry`).
    """

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    power_watts: float = Field(default=co2.DEFAULT_EDGE_POWER_WATTS, ge=0)
    intensity_g_per_kwh: float = Field(default=co2.DEFAULT_EDGE_INTENSITY_G_PER_KWH, ge=0)
    renewable_attested: bool = False

    def footprint(self) -> co2.EdgeFootprint:
        return co2.EdgeFootprint(self.power_watts, self.intensity_g_per_kwh, self.renewable_attested)
