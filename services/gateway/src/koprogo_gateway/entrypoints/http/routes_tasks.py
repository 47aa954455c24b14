"""`/mcp/v1/execute` and `/mcp/v1/tasks`: grid tasks over HTTP, each route one call into `service_layer/tasks.py`."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from koprogo_gateway.domain.errors import InvalidTaskRequestError, UnsupportedMediaTypeError
from koprogo_gateway.domain.idempotency import IDEMPOTENCY_HEADER
from koprogo_gateway.domain.task_request import TaskRequestIn
from koprogo_gateway.domain.task_view import TaskAccepted, TaskOut, parse_task_query
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Reader, Writer
from koprogo_gateway.entrypoints.http.json_body import READ_AS_JSON, is_json, media_type
from koprogo_gateway.service_layer.tasks import TaskSubmission, UploadedDocument
from koprogo_shared.task_events import TASK_TYPES

router = APIRouter(prefix="/mcp/v1", tags=["tasks"])

_FORM_FIELDS = frozenset({"task_type", "copro_id", "input_data", "document"})
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid bearer token (when authentication is on)."},
    403: {"description": "The token lacks the scope, or `copro_id` is not one of its copros."},
    404: {"description": "No such task, or another copro's."},
}
# The optional `Idempotency-Key` of `/execute`, as OpenAPI shows it.
TaskIdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="At most one task per key (1-255 printable ASCII characters, e.g. a UUID): a retry "
        "within 24 h with the same key and request (type, copro, parameters, document) gets the first "
        "submission's 202 body, same task id (header `Idempotent-Replayed: true`), and submits nothing; "
        "another request with the same key is a 422 `idempotency_key_reused`. Keys are per user.",
    ),
]
_EXECUTE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": TaskRequestIn.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["task_type"],
                    "properties": {
                        "task_type": {"type": "string", "enum": list(TASK_TYPES)},
                        "copro_id": {"type": "string"},
                        "input_data": {"type": "string", "description": "A JSON object, as text."},
                        "document": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}


@router.post(
    "/execute",
    name="execute_task",
    status_code=202,
    response_model=TaskAccepted,
    openapi_extra=_EXECUTE_BODY,
    responses={
        **_ERRORS,
        413: {
            "description": "The document is larger than TASK_DOCUMENT_MAX_BYTES, or `input_data` without it "
            "larger than TASK_PARAMETERS_MAX_BYTES."
        },
        415: {"description": "A body that is neither JSON nor multipart/form-data."},
        422: {
            "description": "Unknown `task_type`, missing input for it, `unsupported_document` (its sniffed "
            "type), `document_url_unsupported` (not s3://), `document_url_not_allowed`, "
            "`document_store_not_configured`, `document_not_found`; `idempotency_key_reused`: the "
            "`Idempotency-Key` came with another request."
        },
        429: {"description": "A rate-limit policy is exhausted (a task counts as one request, as a chat)."},
        503: {
            "description": "The message bus, the document store or the idempotency-key store cannot be reached."
        },
    },
)
async def execute(
    request: Request, caller: Writer, gateway: GatewayDep, idempotency_key: TaskIdempotencyKey = None
) -> JSONResponse:
    """Submit a grid task (`ocr_invoice`, `translate_document`, `summarize_meeting`, `predict_expenses`) as JSON or multipart/form-data (file part `document`); 202 with its id, to follow at `Location`; at most once per `Idempotency-Key`."""
    submitted = await gateway.tasks.submit(
        caller, await _submission(request, gateway.settings.max_body_bytes), idempotency_key
    )
    accepted = submitted.accepted
    headers = submitted.headers | {"Location": f"/mcp/v1/tasks/{accepted.id}"}
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)


@router.get("/tasks/{task_id}", response_model=TaskOut, responses=_ERRORS)
async def get_task(task_id: str, caller: Reader, gateway: GatewayDep) -> TaskOut:
    """One task: status (`verifying` while replicas must agree), result or error, attempts (node, start, end, outcome), grams of CO₂, and its verification by redundancy (replicas, agreement, outcome)."""
    return await gateway.tasks.get(caller, task_id)


@router.get("/tasks", responses={**_ERRORS, 422: {"description": "A malformed filter."}})
async def list_tasks(
    caller: Reader,
    gateway: GatewayDep,
    status: str | None = None,
    task_type: str | None = None,
    date_from: Annotated[
        str | None, Query(alias="from", description="ISO 8601, on created_at (inclusive)")
    ] = None,
    date_to: Annotated[
        str | None, Query(alias="to", description="ISO 8601, on created_at (exclusive)")
    ] = None,
    limit: Annotated[str | None, Query(description="1-500, default 50")] = None,
    copro_id: str | None = None,
) -> dict[str, list[TaskOut]]:
    """The caller's copros' tasks, newest first, filtered by status, task type and creation time."""
    query = parse_task_query(
        status=status, task_type=task_type, date_from=date_from, date_to=date_to, limit=limit
    )
    return {"tasks": await gateway.tasks.list(caller, query, copro_id)}


@router.delete(
    "/tasks/{task_id}",
    status_code=202,
    response_model=TaskOut,
    responses={**_ERRORS, 409: {"description": "`task_final`: the task has already ended (its `status`)."}},
)
async def cancel_task(task_id: str, caller: Writer, gateway: GatewayDep) -> TaskOut:
    """Ask for a task still pending, assigned or running to be cancelled; 202 with the task as it is now."""
    return await gateway.tasks.cancel(caller, task_id)


async def _submission(request: Request, max_field_bytes: int) -> TaskSubmission:
    """The submission from a JSON body or a multipart form (its own 422s and 415)."""
    sent = media_type(request.headers.get("content-type", ""))
    if sent == "multipart/form-data":
        return await _from_form(request, max_field_bytes)
    if not (is_json(sent) or sent in READ_AS_JSON):
        raise UnsupportedMediaTypeError(
            f"send the task as application/json or multipart/form-data, not {sent}"
        )
    try:
        body = TaskRequestIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _invalid(exc) from None
    return TaskSubmission(task_type=body.task_type, input_data=body.input_data, copro_id=body.copro_id)


async def _from_form(request: Request, max_field_bytes: int) -> TaskSubmission:
    async with request.form(max_files=1, max_fields=len(_FORM_FIELDS), max_part_size=max_field_bytes) as form:
        unknown = sorted(set(form.keys()) - _FORM_FIELDS)
        if unknown:
            raise InvalidTaskRequestError(
                f"unknown form fields: {', '.join(unknown)} (expected {sorted(_FORM_FIELDS)})"
            )
        fields: dict[str, Any] = {}
        for name in ("task_type", "copro_id", "input_data"):
            value = form.get(name)
            if isinstance(value, UploadFile):
                raise InvalidTaskRequestError(f"form field {name!r} must be text, not a file")
            if value is not None:
                fields[name] = value
        if "input_data" in fields:
            try:
                fields["input_data"] = json.loads(fields["input_data"])
            except json.JSONDecodeError as exc:
                raise InvalidTaskRequestError(f"input_data: not valid JSON: {exc.msg}") from None
        try:
            body = TaskRequestIn.model_validate(fields)
        except ValidationError as exc:
            raise _invalid(exc) from None
        upload = None
        part = form.get("document")
        if part is not None:
            if not isinstance(part, UploadFile):
                raise InvalidTaskRequestError("'document' must be a file part")
            upload = UploadedDocument(await part.read(), part.filename)
    return TaskSubmission(body.task_type, body.input_data, body.copro_id, upload)


def _invalid(exc: ValidationError) -> InvalidTaskRequestError:
    details = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]} for e in exc.errors()
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return InvalidTaskRequestError(f"invalid task: {summary}", extra={"details": details})
