"""Whether a deployment takes a work item now, or why not (pure: no I/O, the clock passed in)."""

from __future__ import annotations

from datetime import datetime

from koprogo_cloud.domain.deployments import Deployment
from koprogo_cloud.domain.failures import FailureOutcome
from koprogo_shared.events import RunInference, required_features


def refusal(
    dep: Deployment,
    work: RunInference,
    now: datetime,
    *,
    unavailable_reason: str | None,
    cooling_until: datetime | None,
) -> FailureOutcome | None:
    """None when `dep` can run `work` now; otherwise what the caller (or the router) is told.

    `unavailable_reason`: why the deployment has no provider client (no key), None when it has
    one; `cooling_until`: the end of its cooldown, None when it is not cooling down.
    """
    if now >= work.deadline:
        return FailureOutcome(
            504,
            "deadline_exceeded",
            "the request expired before a cloud deployment could run it",
            False,
            False,
        )
    where = f"cloud deployment {dep.id!r}"
    if unavailable_reason is not None:
        return FailureOutcome(
            503, "deployment_unavailable", f"{where} is unavailable: {unavailable_reason}", True, False
        )
    if work.model not in dep.models:
        return FailureOutcome(404, "model_not_served", f"{where} does not serve {work.model!r}", True, False)
    missing = sorted(required_features(work.messages, work.controls) - dep.effective_features)
    if missing:
        # The router sends a request only where its controls are honoured; none is ever dropped.
        return FailureOutcome(
            400,
            "unsupported_parameter",
            f"{where} does not pass {', '.join(missing)} to its provider",
            False,
            False,
        )
    if cooling_until is not None:
        return FailureOutcome(
            503,
            "deployment_cooling_down",
            f"{where} is cooling down after repeated failures (until {cooling_until.isoformat()})",
            True,
            False,
        )
    return None
