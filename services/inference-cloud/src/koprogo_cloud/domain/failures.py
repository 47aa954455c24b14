"""What a provider's answer or failure means for KoproGo: finish reasons, error codes, safe messages.

A failure is *fallback-worthy* when another target may well succeed (this provider is
down, slow, rate-limited or refuses this key): the router gets InferenceAttemptFailed
and tries the next target. A request the provider rejects as such (400: too long,
invalid) would fail anywhere: the caller gets ChatFailed at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from koprogo_cloud.domain.errors import ProviderError
from koprogo_shared.events import FinishReason
from koprogo_shared.generation import ToolCall

_ANTHROPIC_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}
_OPENAI_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    # Mistral's own values, through its OpenAI-compatible API.
    "model_length": "length",
    "error": "error",
}


def anthropic_finish_reason(stop_reason: str | None) -> FinishReason:
    return _ANTHROPIC_FINISH.get(stop_reason or "", "stop" if stop_reason is None else "error")


def openai_finish_reason(finish_reason: str | None) -> FinishReason:
    return _OPENAI_FINISH.get(finish_reason or "", "stop" if finish_reason is None else "error")


def answer_finish_reason(reason: FinishReason, tool_calls: list[ToolCall] | None) -> FinishReason:
    """`tool_calls` when the answer calls tools (unless cut by the length limit), never without calls."""
    if tool_calls:
        return reason if reason == "length" else "tool_calls"
    return "stop" if reason == "tool_calls" else reason


# Anthropic's error types, for an error event in the middle of a stream (its HTTP status was 200).
ANTHROPIC_ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def stream_error_status(body: object) -> int:
    """The status an error event stands for (`{"type": "error", "error": {"type": ...}}`); 502 if unknown."""
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return ANTHROPIC_ERROR_STATUS.get(kind, 502) if isinstance(kind, str) else 502


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    """What the caller (or the router) is told: HTTP status, error code, message."""

    status: int
    error: str
    message: str
    fallback_worthy: bool
    # Counts towards the deployment's cooldown (the provider's fault, not the request's).
    counts_for_cooldown: bool


def classify(error: ProviderError, deployment_id: str, calls: int) -> FailureOutcome:
    """Translate a provider failure (after `calls` calls) into KoproGo's status and error code."""
    where = f"cloud deployment {deployment_id!r}"
    after = f" after {calls} call{'s' if calls != 1 else ''}"
    if error.kind == "timeout":
        return FailureOutcome(504, "provider_timeout", f"{where} did not answer in time{after}", True, True)
    if error.kind == "connection":
        return FailureOutcome(502, "provider_unreachable", f"{where} is unreachable{after}", True, True)
    if error.kind == "bad_response":
        return FailureOutcome(
            502, "provider_bad_response", f"{where} gave an unusable answer: {error.detail}", True, True
        )
    status = error.status or 500
    if status in (401, 403):
        return FailureOutcome(
            502,
            "provider_auth_failed",
            f"{where} refused its API key (HTTP {status}); an operator must fix the key",
            True,
            True,
        )
    if status == 429:
        return FailureOutcome(503, "provider_rate_limited", f"{where} is rate-limited{after}", True, True)
    if status == 404:
        return FailureOutcome(
            502, "provider_model_not_found", f"{where} does not know the configured model", True, True
        )
    if status in (400, 413, 422):
        detail = f": {error.detail}" if error.detail else ""
        return FailureOutcome(
            422, "provider_rejected_request", f"{where} rejected the request{detail}", False, False
        )
    if status == 408:
        return FailureOutcome(504, "provider_timeout", f"{where} timed out (HTTP 408){after}", True, True)
    return FailureOutcome(502, "provider_error", f"{where} failed with HTTP {status}{after}", True, True)


# Anything shaped like a credential: `sk-...`, `sk-ant-...`, `key-...`, bearer tokens, long opaque runs.
_KEY_LIKE = re.compile(
    r"(?i)\b(?:sk|pk|rk|key|api[-_]?key|token|bearer)[-_:= ]+[A-Za-z0-9_\-*.]{6,}"
    r"|[A-Za-z0-9_\-]{24,}"
)
SAFE_DETAIL_CHARS = 200


def safe_detail(text: str | None, secrets: tuple[str, ...] = ()) -> str:
    """A provider's message cut short, with the configured keys and anything key-like removed."""
    if not text:
        return ""
    out = str(text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "[redacted]")
            # Providers echo a masked key (`sk-abc...wxyz`): its ends are secret too.
            if len(secret) >= 12:
                out = out.replace(secret[:8], "[redacted]").replace(secret[-6:], "[redacted]")
    out = _KEY_LIKE.sub("[redacted]", out)
    out = " ".join(out.split())
    if len(out) > SAFE_DETAIL_CHARS:
        out = out[: SAFE_DETAIL_CHARS - 1] + "…"
    return out
