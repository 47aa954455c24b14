"""Idempotency keys: one generation per key, whatever the retries (Stripe's model, for chats and tasks).

A client may send `Idempotency-Key` with a chat or a grid task (`/mcp/v1/execute`). The first request with a key stores an entry
(`IdempotencyEntry`) before anything is published: the request id it runs under, a fingerprint
of its body, its deadline and the reply subject its answers come to. Once its outcome is known
(the completion, or the error its caller got) the outcome is stored in the entry. A retry with
the same key and body gets that outcome, or waits for it, and never runs a request of its own;
the same key with another body is refused (422 `idempotency_key_reused`). Keys are the
caller's: the stored key is a hash of the user id and the header, so users never meet.

A keyed chat may be cancelled by its user (`POST /mcp/v1/chat/cancel`, `ChatCancelIn`): while it
runs, its entry is settled with the 409 `chat_cancelled` its retries then get (`CANCELLED`), before
the worker is told to stop, so the answer it cuts short is never stored as the key's outcome;
once settled, the cancel only says how it ended (`cancel_status`).

A task's entry names its task id; its outcome is the submission's 202 body (`TaskAccepted`).
Its `deadline` is the submitting gateway's lease: past it with no outcome, that gateway stopped
or gave up (it releases the lease at once when its submission fails), and a retry takes the
submission over under the same task id.

Pure rules and values here; the store is `adapters/idempotency_store.py`, the use cases
`service_layer/chat.py` and `service_layer/tasks.py`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.errors import ChatCancelledError, GatewayError, InvalidIdempotencyKeyError
from koprogo_gateway.domain.task_view import TaskAccepted
from koprogo_shared.events import ChatCompleted

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
# How a grid task's fingerprint starts (a chat's is a bare sha256): a chat cancel leaves tasks alone.
TASK_FINGERPRINT_PREFIX = "task:"


def store_key(user_id: str | None, header: str) -> str:
    """The key an `Idempotency-Key` header is stored under for this user; InvalidIdempotencyKeyError
    when the header is empty, longer than 255 characters, or not printable ASCII."""
    if not 1 <= len(header) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in header):
        raise InvalidIdempotencyKeyError(
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_KEY_CHARS} printable ASCII characters (a UUID is a good one)"
        )
    # Hashes: the bucket never holds a user id, and one user's key cannot reach another's entry;
    # the user's own prefix lets an erasure remove every entry of theirs (`user_keys`).
    entry = hashlib.sha256(f"{user_id or ''}\n{header}".encode()).hexdigest()
    return f"{user_keys(user_id).removesuffix('.>')}.{entry}"


def user_keys(user_id: str | None) -> str:
    """The store keys of one user's entries, as a key-value filter (`<user hash>.>`)."""
    return f"u{hashlib.sha256((user_id or '').encode()).hexdigest()[:32]}.>"


def body_fingerprint(body: ChatRequestIn) -> str:
    """What makes two bodies the same request. `stream` is left out: a retry may ask for the
    same answer whole or in pieces."""
    fields = body.model_dump(mode="json", exclude={"stream"})
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def task_fingerprint(
    task_type: str,
    copro_id: str | None,
    parameters: dict[str, Any],
    document_sha256: str | None,
    document_url: str | None,
    filename: str | None,
) -> str:
    """What makes two task submissions the same request: its type, copro and parameters, and its
    document by content (the sha256 of the bytes uploaded or sent in base64, whichever way they
    came) or, for one read from the operator's store, by its `document_url`, and the document's
    name (a file part's or `input_data.filename`, as the task stores it)."""
    fields = {
        "task_type": task_type,
        "copro_id": copro_id,
        "parameters": {k: v for k, v in parameters.items() if k != "filename"},
        "document_sha256": document_sha256,
        "document_url": document_url,
        "filename": filename,
    }
    return (
        TASK_FINGERPRINT_PREFIX
        + hashlib.sha256(
            json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()
        ).hexdigest()
    )


class StoredError(BaseModel):
    """The error a keyed request's caller got: its HTTP status and JSON fields."""

    model_config = ConfigDict(frozen=True)

    status: int
    error: str
    message: str
    extra: dict[str, object] = {}

    @classmethod
    def of(cls, exc: GatewayError) -> StoredError:
        return cls(status=exc.status, error=exc.error, message=exc.message, extra=exc.extra)


class StoredOutcome(BaseModel):
    """How a keyed request ended: its completion (and the latency its first caller saw), or an
    error; for a task, its submission's 202 body."""

    model_config = ConfigDict(frozen=True)

    completion: ChatCompleted | None = None
    task: TaskAccepted | None = None
    latency_ms: float = 0.0
    error: StoredError | None = None


class IdempotencyEntry(BaseModel):
    """A keyed request: what it runs as, and its outcome once known (None while it runs).

    `request_id`: the chat's request id, or the task's id. `deadline`: the chat's, or the end of
    the lease of the gateway submitting the task. `reply_subject`: where a chat's answers come
    (a task has none).
    """

    @property
    def is_chat(self) -> bool:
        return not self.fingerprint.startswith(TASK_FINGERPRINT_PREFIX)

    model_config = ConfigDict(frozen=True)

    request_id: str
    fingerprint: str
    created_at: datetime
    deadline: datetime
    reply_subject: str = ""
    # A chat's copro (its failure is recorded under it when it is cancelled); None for a task,
    # a chat without one, or an entry stored before this field existed.
    copro_id: str | None = None
    outcome: StoredOutcome | None = None

    def settled(self, outcome: StoredOutcome) -> IdempotencyEntry:
        return self.model_copy(update={"outcome": outcome})

    def leased_until(self, deadline: datetime) -> IdempotencyEntry:
        return self.model_copy(update={"deadline": deadline})


def may_publish_again(entry: IdempotencyEntry, now: datetime, duplicate_window_s: float) -> bool:
    """Whether a retry may publish the entry's request again, under the same id.

    The first publish may have failed from the gateway's view and yet been stored (its
    acknowledgement lost), or not: publishing the same event id again is stored at most once,
    as long as the stream still remembers the id (its de-duplication window; half of it, for
    clock skew between gateways). Past the deadline no worker would run it anyway.
    """
    if entry.outcome is not None or now >= entry.deadline:
        return False
    return now < entry.created_at + timedelta(seconds=duplicate_window_s / 2)


def lapsed(entry: IdempotencyEntry, now: datetime) -> bool:
    """No outcome and the lease over: nobody is submitting the task now, a retry may take it over."""
    return entry.outcome is None and now >= entry.deadline


def abandoned(entry: IdempotencyEntry, now: datetime, grace_s: float) -> bool:
    """No outcome well past the deadline: the gateway that ran it stopped before storing one."""
    return entry.outcome is None and now >= entry.deadline + timedelta(seconds=grace_s)


class ChatCancelIn(BaseModel):
    """`POST /mcp/v1/chat/cancel`'s body: the `Idempotency-Key` the chat was sent with."""

    model_config = ConfigDict(extra="forbid")

    idempotency_key: str = Field(min_length=1, max_length=MAX_KEY_CHARS)


CancelStatus = Literal["cancelled", "already_answered", "already_failed"]


class ChatCancelOut(BaseModel):
    """What became of the chat: `cancelled` (now, or by an earlier cancel), or it had already
    ended, answered (the answer stays the key's outcome) or failed."""

    status: CancelStatus


# The outcome a cancelled chat's key holds: every retry with the key gets this 409.
CANCELLED = StoredOutcome(
    error=StoredError.of(
        ChatCancelledError(
            "this chat was cancelled by its user: a retry with the same Idempotency-Key gets this "
            "error; send the request with a new key to ask again"
        )
    )
)


def cancel_status(outcome: StoredOutcome) -> CancelStatus:
    """What a cancel answers for a key whose chat already has `outcome`."""
    if outcome.completion is not None:
        return "already_answered"
    if outcome.error is not None and outcome.error.error == ChatCancelledError.error:
        return "cancelled"
    return "already_failed"
