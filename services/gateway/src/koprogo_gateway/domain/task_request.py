"""A grid task as a caller submits it (`POST /mcp/v1/execute`), and the rules it must pass. Pure.

The seed's body `{task_type, input_data, copro_id}`. A document comes one of three ways: base64
in `input_data.document`, a multipart file part, or `input_data.document_url` naming an object
of the operator's S3-compatible store (`s3://bucket/key`: nothing else is fetched, by the gateway
or a node). What goes on to the node is `input_data` without `document`/`document_url`
(`parameters`) and a reference to the stored document.

Per task type (`check_task_input`):

* `ocr_invoice`: a document, PDF or an image (PNG, JPEG, TIFF);
* `summarize_meeting`, `translate_document`: `input_data.text` or a text, CSV or PDF document;
  `translate_document` also `target_language`: fr, en or nl;
* `predict_expenses`: `input_data.history` (a list) or a CSV document.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from typing import Any, NewType, cast

from pydantic import BaseModel, ConfigDict, Field

from koprogo_gateway.domain.document_types import CSV, IMAGES, PDF, TEXT, accepted_list
from koprogo_gateway.domain.errors import (
    DocumentTooLargeError,
    DocumentUrlError,
    InvalidTaskRequestError,
    RequestTooLargeError,
    TaskNotFoundError,
    UnsupportedDocumentError,
)
from koprogo_shared.task_events import TASK_TYPES, TaskType

TaskId = NewType("TaskId", uuid.UUID)
TARGET_LANGUAGES = ("fr", "en", "nl")
# What each task type takes as a document.
DOCUMENT_TYPES: dict[str, frozenset[str]] = {
    "ocr_invoice": frozenset({PDF}) | IMAGES,
    "summarize_meeting": frozenset({TEXT, CSV, PDF}),
    "translate_document": frozenset({TEXT, CSV, PDF}),
    "predict_expenses": frozenset({CSV}),
}
# Taken out of `input_data`: the document travels by reference, never in the event.
DOCUMENT_KEYS = ("document", "document_url")
MAX_FILENAME_CHARS = 255


class TaskRequestIn(BaseModel):
    """`POST /mcp/v1/execute` as JSON (the seed's shape); as multipart, the same fields plus a file."""

    model_config = ConfigDict(extra="forbid")

    # Checked by `parse_task_type`, whose 422 names the allowed ones.
    task_type: str = Field(
        description=f"One of: {', '.join(TASK_TYPES)}.", json_schema_extra={"enum": list(TASK_TYPES)}
    )
    input_data: dict[str, Any] = Field(default_factory=dict)
    copro_id: str | None = Field(default=None, max_length=255)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def filename(self) -> str:
        return self.key.rsplit("/", 1)[-1][:MAX_FILENAME_CHARS]


def parse_task_type(value: str) -> TaskType:
    if value not in TASK_TYPES:
        raise InvalidTaskRequestError(
            f"task_type {value!r} is not one of: {', '.join(TASK_TYPES)}",
            extra={"allowed": list(TASK_TYPES)},
        )
    return cast(TaskType, value)


def parse_task_id(value: str) -> TaskId:
    """A task id is a UUID; anything else names no task (404, as an unknown one)."""
    try:
        return TaskId(uuid.UUID(value))
    except ValueError:
        raise TaskNotFoundError(f"no task {value!r}") from None


def parameters_of(input_data: dict[str, Any]) -> dict[str, Any]:
    """What the node reads as its parameters: `input_data` without the document."""
    return {k: v for k, v in input_data.items() if k not in DOCUMENT_KEYS}


def check_parameters_size(parameters: dict[str, Any], max_bytes: int) -> None:
    """The parameters travel inside the event: bounded (413), and free of NUL characters, which
    PostgreSQL's JSONB (the ledger's projection) cannot store (422)."""
    if _has_nul(parameters):
        raise InvalidTaskRequestError("input_data contains a NUL character (\\u0000), which cannot be stored")
    encoded = json.dumps(parameters, ensure_ascii=False, separators=(",", ":"))
    if len(encoded.encode()) > max_bytes:
        raise RequestTooLargeError(
            f"input_data without its document is larger than {max_bytes} bytes (TASK_PARAMETERS_MAX_BYTES); "
            "send a long text as a document instead (multipart part 'document' or input_data.document)"
        )


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def inline_document(input_data: dict[str, Any], max_bytes: int) -> bytes | None:
    """The base64 `input_data.document` decoded (a `data:...;base64,` prefix allowed), or None.

    Over `max_bytes` is a 413, decided from the text's length before anything is decoded.
    """
    value = input_data.get("document")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidTaskRequestError("input_data.document must be a base64 string")
    if value.startswith("data:") and ";base64," in value[:200]:
        value = value.split(";base64,", 1)[1]
    compact = "".join(value.split())  # line breaks of MIME-style base64
    # Its decoded size, read off the text: 3 bytes per 4 characters, less the padding.
    quads, _ = divmod(len(compact), 4)
    if quads * 3 - compact[-2:].count("=") > max_bytes:
        raise document_too_large(max_bytes)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidTaskRequestError("input_data.document is not valid base64") from None


def document_too_large(max_bytes: int) -> DocumentTooLargeError:
    return DocumentTooLargeError(
        f"the document is larger than {max_bytes} bytes ({max_bytes / 1024 / 1024:g} MiB, "
        "TASK_DOCUMENT_MAX_BYTES)",
        extra={"max_bytes": max_bytes},
    )


def document_url_of(input_data: dict[str, Any]) -> str | None:
    value = input_data.get("document_url")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidTaskRequestError("input_data.document_url must be a non-empty string")
    return value.strip()


def parse_document_url(url: str) -> S3Location:
    """`s3://bucket/key`; any other scheme is refused (nodes and the gateway fetch no URLs)."""
    scheme, sep, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    if not sep or scheme.lower() != "s3":
        raise DocumentUrlError(
            "document_url_unsupported",
            f"document_url {url[:200]!r} is not an s3://bucket/key URL: the gateway reads documents only "
            "from the operator's S3-compatible store, never from http(s):// or file:// URLs; upload "
            "the file instead (multipart part 'document', or base64 in input_data.document)",
        )
    if not bucket or not key:
        raise DocumentUrlError(
            "document_url_unsupported", f"document_url {url[:200]!r} must be s3://bucket/key"
        )
    return S3Location(bucket=bucket, key=key)


def require_allowed_bucket(location: S3Location, allowed: frozenset[str]) -> None:
    if location.bucket not in allowed:
        raise DocumentUrlError(
            "document_url_not_allowed",
            f"bucket {location.bucket!r} is not one this gateway may read (S3_ALLOWED_BUCKETS)",
        )


def check_task_input(
    task_type: TaskType, parameters: dict[str, Any], document_type: str | None
) -> dict[str, Any]:
    """What `task_type` needs is there (422 naming what is missing); the parameters as passed on."""
    if document_type is not None and document_type not in DOCUMENT_TYPES[task_type]:
        accepted = accepted_list(DOCUMENT_TYPES[task_type])
        raise UnsupportedDocumentError(
            f"{task_type} does not take a {document_type} document; it takes: {accepted}",
            extra={"detected": document_type, "accepted": sorted(DOCUMENT_TYPES[task_type])},
        )
    if task_type == "ocr_invoice" and document_type is None:
        raise InvalidTaskRequestError(
            "ocr_invoice needs a document (PDF, PNG, JPEG or TIFF): a multipart part 'document', "
            "base64 in input_data.document, or input_data.document_url (s3://bucket/key)"
        )
    if task_type in ("summarize_meeting", "translate_document") and document_type is None:
        text = parameters.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InvalidTaskRequestError(
                f"{task_type} needs input_data.text (a non-empty string) or a text or PDF document"
            )
    if task_type == "translate_document":
        language = parameters.get("target_language")
        if not isinstance(language, str) or language.strip().lower() not in TARGET_LANGUAGES:
            raise InvalidTaskRequestError(
                f"translate_document needs input_data.target_language, one of: {', '.join(TARGET_LANGUAGES)}"
                + (f" (got {language!r})" if language is not None else ""),
                extra={"allowed": list(TARGET_LANGUAGES)},
            )
        parameters = {**parameters, "target_language": language.strip().lower()}
    if task_type == "predict_expenses" and document_type is None:
        history = parameters.get("history")
        if not isinstance(history, list) or not history:
            raise InvalidTaskRequestError(
                "predict_expenses needs input_data.history (a non-empty list of past expenses) or a CSV document"
            )
    return parameters


def filename_of(value: object) -> str | None:
    """A file name as the caller gave it, kept only as a label (never trusted for the type)."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().replace("\\", "/").rsplit("/", 1)[-1][:MAX_FILENAME_CHARS] or None
