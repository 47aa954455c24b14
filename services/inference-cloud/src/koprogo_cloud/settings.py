"""Cloud worker settings.

Environment variables are the field names in upper case, as for every service: NATS_URL,
NATS_NKEY_SEED_FILE, OPS_HOST, OPS_PORT (8083), LOG_LEVEL, CLOUD_DEPLOYMENTS_FILE,
STATUS_INTERVAL_S, ACK_WAIT_S, MAX_DELIVER. The providers' keys are read from the
variables each deployment names (ANTHROPIC_API_KEY, OPENAI_API_KEY, MISTRAL_API_KEY,
OPENAI_COMPATIBLE_API_KEY by default), never stored in settings.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, ValidationError, field_validator

from koprogo_cloud.domain.deployments import Deployment, default_deployments
from koprogo_cloud.domain.errors import DeploymentConfigError
from koprogo_shared.settings import ServiceSettings

DEFAULT_CLOUD_OPS_PORT = 8083


class CloudSettings(ServiceSettings):
    """Where the deployments are configured and how the worker runs."""

    ops_port: int = DEFAULT_CLOUD_OPS_PORT
    # TOML with `[[deployments]]` tables; unset: the built-in defaults (`default_deployments`).
    cloud_deployments_file: Path | None = None
    status_interval_s: float = Field(default=2.0, gt=0)
    # A work item goes back to the queue this long after the worker stops answering for it;
    # in-progress acks keep it while a provider call (and its retries) runs.
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=3, ge=1)
    shutdown_grace_s: float = Field(default=30.0, ge=0)

    @field_validator("cloud_deployments_file", mode="before")
    @classmethod
    def _no_file_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    def deployments(self, environ: Mapping[str, str] | None = None) -> list[Deployment]:
        """The configured deployments; raises DeploymentConfigError saying what to fix."""
        env = os.environ if environ is None else environ
        if self.cloud_deployments_file is None:
            return default_deployments(env)
        return load_deployments_file(self.cloud_deployments_file)


def load_deployments_file(path: Path) -> list[Deployment]:
    """Parse a deployments file: `[[deployments]]` tables of `Deployment` fields."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeploymentConfigError(f"cannot read CLOUD_DEPLOYMENTS_FILE {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeploymentConfigError(f"CLOUD_DEPLOYMENTS_FILE {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"deployments"}
    if unknown:
        raise DeploymentConfigError(
            f"{path}: unknown top-level keys {sorted(unknown)}; expected [[deployments]]"
        )
    tables = data.get("deployments")
    if not isinstance(tables, list) or not tables:
        raise DeploymentConfigError(f"{path}: no [[deployments]] table")
    deployments: list[Deployment] = []
    for index, table in enumerate(tables, start=1):
        try:
            deployments.append(Deployment.model_validate(table))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'deployment'}: {e['msg']}" for e in exc.errors()
            )
            name = table.get("id", f"#{index}") if isinstance(table, dict) else f"#{index}"
            raise DeploymentConfigError(f"{path}: deployment {name}: {problems}") from None
    ids = [d.id for d in deployments]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DeploymentConfigError(f"{path}: deployment ids must be unique, repeated: {duplicates}")
    return deployments
