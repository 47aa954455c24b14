"""The cloud worker's errors.

CloudError
├── ProviderError            a provider call failed (status, timeout, unreachable, bad answer)
├── InvalidCommandError      a work item that can never be handled (dead-lettered)
└── UnmappableRequestError   a chat the provider's API cannot express (the caller gets a 400)

DeploymentConfigError (koprogo_shared.deployments): the deployments file is unreadable or
invalid (start-up); shared with the `koprogo` CLI, which checks the file before a stack starts.
"""

from __future__ import annotations

from typing import Literal

from koprogo_shared.deployments import DeploymentConfigError

FailureKind = Literal["status", "timeout", "connection", "bad_response"]


class CloudError(Exception):
    """Base of the cloud worker's errors."""


class ProviderError(CloudError):
    """One provider call failed. `detail` is short and already free of keys and raw bodies.

    kind       status: the provider answered `status`; timeout: no answer within the
               timeout; connection: unreachable; bad_response: an answer we cannot use
    retry_after_s  the provider's Retry-After (seconds), when it sent one
    """

    def __init__(
        self,
        kind: FailureKind,
        detail: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind: FailureKind = kind
        self.detail = detail
        self.status = status
        self.retry_after_s = retry_after_s


class InvalidCommandError(CloudError):
    """A work item that can never be handled (its ids are not UUIDs)."""


class UnmappableRequestError(CloudError):
    """A chat that cannot be put in the provider's shape (a tool call whose arguments are not an object)."""


__all__ = [
    "CloudError",
    "DeploymentConfigError",
    "FailureKind",
    "InvalidCommandError",
    "ProviderError",
    "UnmappableRequestError",
]
