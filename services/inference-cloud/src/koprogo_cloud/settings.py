"""Cloud worker settings.

Environment variables are the field names in upper case, as for every service: NATS_URL,
NATS_NKEY_SEED_FILE, OPS_HOST, OPS_PORT (8083), LOG_LEVEL, CLOUD_DEPLOYMENTS_FILE,
STATUS_INTERVAL_S, ACK_WAIT_S, MAX_DELIVER. The providers' keys are read from the
variables each deployment names (ANTHROPIC_API_KEY, OPENAI_API_KEY, MISTRAL_API_KEY,
OPENAI_COMPATIBLE_API_KEY by default), never stored in settings.
"""

from __future__ import annotations

from pydantic import Field

from koprogo_shared.deployments import DeploymentsFileSettings, load_deployments_file
from koprogo_shared.settings import ServiceSettings

DEFAULT_CLOUD_OPS_PORT = 8083


class CloudSettings(ServiceSettings, DeploymentsFileSettings):
    """Where the deployments are configured (`DeploymentsFileSettings`) and how the worker runs."""

    ops_port: int = DEFAULT_CLOUD_OPS_PORT
    status_interval_s: float = Field(default=2.0, gt=0)
    # A work item goes back to the queue this long after the worker stops answering for it;
    # in-progress acks keep it while a provider call (and its retries) runs.
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=3, ge=1)
    shutdown_grace_s: float = Field(default=30.0, ge=0)


__all__ = ["DEFAULT_CLOUD_OPS_PORT", "CloudSettings", "load_deployments_file"]
