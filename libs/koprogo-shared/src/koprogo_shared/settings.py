"""The settings base every service extends (pydantic-settings, from the environment)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Common settings. Environment variables use the field name in upper case (`NATS_URL`)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    log_level: str = "INFO"
    ops_host: str = "127.0.0.1"
    ops_port: int = 0  # /health, /ready and /metrics; 0 disables the ops server
