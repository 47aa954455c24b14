"""A cloud deployment: one provider account and the models it serves.

The deployments file's schema lives in `koprogo_shared.deployments`, shared with the
`koprogo` CLI (which checks the file and names the worker's NATS subjects before a stack
starts); the worker's modules import it from here.
"""

from __future__ import annotations

from koprogo_shared.deployments import (
    ANTHROPIC_FEATURES,
    DEFAULT_API_KEY_ENV,
    DEFAULT_FEATURES,
    MISTRAL_BASE_URL,
    Deployment,
    ProviderName,
    default_deployments,
    key_status,
)

__all__ = [
    "ANTHROPIC_FEATURES",
    "DEFAULT_API_KEY_ENV",
    "DEFAULT_FEATURES",
    "MISTRAL_BASE_URL",
    "Deployment",
    "ProviderName",
    "default_deployments",
    "key_status",
]
