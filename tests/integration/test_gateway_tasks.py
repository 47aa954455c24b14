"""The grid task API over HTTP, on the whole gateway (`create_app`) with a real NATS (its object
store and event log), a real PostgreSQL with the ledger's schema, and a real S3-compatible server
(moto in server mode) for `document_url`.

Most tests run no ledger: rows are written into `mcp_tasks` / `mcp_task_attempts` as its
projection would, and a task not yet projected is read back from KOPROGO_EVENTS. The last one runs
the real ledger, so the reader is checked against what the projection really writes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import nats
import pytest
from fastapi import FastAPI
from moto.server import ThreadedMotoServer
from nats.js import JetStreamContext

from koprogo_cli.ports import free_port
from koprogo_gateway.entrypoints.http.app import create_app
from koprogo_gateway.settings import GatewaySettings
from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_ledger.bootstrap import run_ledger
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared import subjects
from koprogo_shared.grid_stores import declare_grid_stores
from koprogo_shared.nats_connection import ensure_streams
from koprogo_shared.publishing import publish_event
from koprogo_shared.task_events import (
    TaskAssigned,
    TaskCancelRequested,
    TaskCompleted,
    TaskStarted,
    TaskSubmitted,
    TaskUsage,
    task_event_id,
)
from tests.conftest import SecuredNats, settings_fields, wait_until
from tests.integration.nats_permissions_support import connected_as
from tests.token_support import AUTH_SETTINGS, bearer, token

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
INVOICE = (FIXTURES / "facture-chauffage-F-2025-0142.pdf").read_bytes()
SCAN = (FIXTURES / "facture-chauffage-F-2025-0142-scan.png").read_bytes()
TILLEULS = "tilleuls"
LINDE = "de-linde"
# Minted at import, used when the module's turn comes in a suite of half an hour or more: a day.
DAY = timedelta(days=1)
RESIDENT = bearer(token(user="alice", copros=[TILLEULS], ttl=DAY))
NEIGHBOUR = bearer(token(user="bob", copros=[LINDE], ttl=DAY))
READER = bearer(token(user="carol", copros=[TILLEULS], scopes=("mcp:read",), ttl=DAY))
ADMIN = bearer(token(user="ops", scopes=("mcp:admin",), ttl=DAY))
ALLOWED_BUCKET = "tilleuls-docs"
OTHER_BUCKET = "syndic-private"
# A Dutch building's charges, exported by a Belgian spreadsheet (semicolons, decimal commas).
LINDE_CSV = "\n".join(
    ["maand;categorie;bedrag"]
    + [
        f"2024-{m:02d};{c};{v + m * 3},50"
        for m in range(1, 13)
        for c, v in (("verwarming", 3900), ("lift", 250))
    ]
).encode()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A local S3-compatible server with two buckets: one the gateway may read, one it may not."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    s3 = boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    for bucket in (ALLOWED_BUCKET, OTHER_BUCKET):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=ALLOWED_BUCKET, Key="2025/factures/F-2025-0142.png", Body=SCAN)
    s3.put_object(Bucket=ALLOWED_BUCKET, Key="2025/huge.pdf", Body=b"%PDF-1.7\n" + bytes(2 * 1024 * 1024))
    s3.put_object(Bucket=OTHER_BUCKET, Key="f.pdf", Body=INVOICE)
    try:
        yield url
    finally:
        server.stop()


Client = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def gateway(
    clean_jetstream: str, database_url: str, s3_server: str, content_keys_env: dict[str, str]
) -> AsyncIterator[Client]:
    """Start a gateway (settings overridable) on the test's NATS and database: an HTTP client for it."""
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    nc = await nats.connect(clean_jetstream)
    await ensure_streams(nc.jetstream())
    await nc.close()
    stop = asyncio.Event()
    running: list[asyncio.Task[None]] = []
    clients: list[httpx.AsyncClient] = []

    async def serve(app: FastAPI, started: asyncio.Event) -> None:
        # The app's lifespan (its MCP task group) is entered and left in this one task.
        async with app.router.lifespan_context(app):
            started.set()
            await stop.wait()

    async def start(**overrides: Any) -> httpx.AsyncClient:
        fields: dict[str, Any] = {
            "nats_url": clean_jetstream,
            "database_url": database_url,
            "gateway_id": f"gw-tasks-{uuid.uuid4().hex[:6]}",
            "s3_endpoint_url": s3_server,
            "s3_access_key_id": "k",
            "s3_secret_access_key": "s",
            "s3_allowed_buckets": f"{ALLOWED_BUCKET}, other-allowed",
            **AUTH_SETTINGS,
            **settings_fields(content_keys_env),
            **overrides,
        }
        app = create_app(GatewaySettings(**fields))
        started = asyncio.Event()
        running.append(asyncio.create_task(serve(app, started)))
        await asyncio.wait_for(started.wait(), timeout=60)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60)
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            await client.aclose()
        stop.set()
        await asyncio.gather(*running)


@pytest.fixture
async def js(clean_jetstream: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(clean_jetstream)
    yield nc.jetstream()
    await nc.close()


async def submitted_event(js: JetStreamContext, copro: str, task_id: str) -> TaskSubmitted:
    msg = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.task_submitted_key(copro, task_id))
    return TaskSubmitted.model_validate_json(msg.data or b"")


async def stored_document(js: JetStreamContext, task_id: str) -> bytes:
    store = await js.object_store(subjects.DOCUMENTS_BUCKET)
    return (await store.get(task_id)).data or b""


async def task_events(js: JetStreamContext) -> int:
    """How many task events KOPROGO_EVENTS holds."""
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.TASK_EVENTS_ALL)
    return sum((info.state.subjects or {}).values())


async def test_a_base64_invoice_and_a_multipart_csv_are_stored_and_referenced(
    gateway: Client, js: JetStreamContext
) -> None:
    client = await gateway()
    body = {
        "task_type": "ocr_invoice",
        "copro_id": TILLEULS,
        "input_data": {
            "document": base64.b64encode(INVOICE).decode(),
            "filename": "facture.pdf",
            "language": "fr",
        },
    }
    response = await client.post("/mcp/v1/execute", json=body, headers=RESIDENT)

    assert response.status_code == 202, response.text
    accepted = response.json()
    task_id = accepted["id"]
    assert (accepted["status"], accepted["result"]) == ("pending", None)
    assert response.headers["location"] == f"/mcp/v1/tasks/{task_id}"
    assert "ratelimit" in response.headers
    event = await submitted_event(js, TILLEULS, task_id)
    assert event.document is not None
    assert (event.document.content_type, event.document.size, event.document.filename) == (
        "application/pdf",
        len(INVOICE),
        "facture.pdf",
    )
    assert event.document.sha256 == hashlib.sha256(INVOICE).hexdigest()
    assert event.parameters == {"filename": "facture.pdf", "language": "fr"}
    assert (event.user_id, event.copro_id) == ("alice", TILLEULS)
    assert await stored_document(js, task_id) == INVOICE

    response = await client.post(
        "/mcp/v1/execute",
        data={
            "task_type": "predict_expenses",
            "copro_id": LINDE,
            "input_data": json.dumps({"horizon_months": 6}),
        },
        files={"document": ("lasten-2024.txt", LINDE_CSV, "application/pdf")},
        headers=NEIGHBOUR,
    )

    assert response.status_code == 202, response.text
    csv_id = response.json()["id"]
    event = await submitted_event(js, LINDE, csv_id)
    assert event.document is not None
    # The caller's part said PDF and its name .txt: the bytes say CSV.
    assert (event.document.content_type, event.document.filename) == ("text/csv", "lasten-2024.txt")
    assert event.parameters == {"horizon_months": 6}
    assert await stored_document(js, csv_id) == LINDE_CSV


async def test_a_30_mib_upload_is_refused_413_and_nothing_is_published(
    gateway: Client, js: JetStreamContext
) -> None:
    client = await gateway()
    before = await task_events(js)
    big = b"%PDF-1.7\n" + bytes(30 * 1024 * 1024)

    response = await client.post(
        "/mcp/v1/execute",
        data={"task_type": "ocr_invoice", "copro_id": TILLEULS},
        files={"document": ("big.pdf", big, "application/pdf")},
        headers=RESIDENT,
    )

    assert response.status_code == 413
    refusal = response.json()
    assert refusal["error"] == "request_too_large"
    assert "TASK_DOCUMENT_MAX_BYTES" in refusal["message"]
    # Under the body limit but over the document limit: the use case's own 413.
    small = await gateway(task_document_max_bytes=1024 * 1024)
    response = await small.post(
        "/mcp/v1/execute",
        json={
            "task_type": "ocr_invoice",
            "copro_id": TILLEULS,
            "input_data": {"document": base64.b64encode(big[: 1024 * 1024 + 1]).decode()},
        },
        headers=RESIDENT,
    )
    assert response.status_code == 413
    assert response.json()["error"] == "document_too_large"
    assert await task_events(js) == before


async def test_an_executable_renamed_pdf_is_refused_with_what_was_detected(gateway: Client) -> None:
    client = await gateway()
    exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + bytes(8192)

    response = await client.post(
        "/mcp/v1/execute",
        data={"task_type": "ocr_invoice", "copro_id": TILLEULS},
        files={"document": ("facture.pdf", exe, "application/pdf")},
        headers=RESIDENT,
    )

    assert response.status_code == 422
    refusal = response.json()
    assert refusal["error"] == "unsupported_document"
    assert "Windows executable" in refusal["message"] and "application/pdf" in refusal["message"]


async def test_document_urls_other_than_s3_are_refused_and_s3_reads_only_allowed_buckets(
    gateway: Client, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    client = await gateway()

    async def execute(url: str) -> httpx.Response:
        body = {"task_type": "ocr_invoice", "copro_id": TILLEULS, "input_data": {"document_url": url}}
        return await client.post("/mcp/v1/execute", json=body, headers=RESIDENT)

    http = await execute("http://127.0.0.1:9/facture.pdf")
    assert (http.status_code, http.json()["error"]) == (422, "document_url_unsupported")
    assert "http" in http.json()["message"]

    other = await execute(f"s3://{OTHER_BUCKET}/f.pdf")
    assert (other.status_code, other.json()["error"]) == (422, "document_url_not_allowed")

    missing = await execute(f"s3://{ALLOWED_BUCKET}/2025/none.pdf")
    assert (missing.status_code, missing.json()["error"]) == (422, "document_not_found")

    ok = await execute(f"s3://{ALLOWED_BUCKET}/2025/factures/F-2025-0142.png")
    assert ok.status_code == 202, ok.text
    task_id = ok.json()["id"]
    event = await submitted_event(js, TILLEULS, task_id)
    assert event.document is not None
    assert (event.document.content_type, event.document.filename) == ("image/png", "F-2025-0142.png")
    assert "document_url" not in event.parameters
    assert await stored_document(js, task_id) == SCAN

    # Over the limit: refused on the HEAD's size, without downloading it.
    small = await gateway(task_document_max_bytes=1024 * 1024)
    body = {
        "task_type": "ocr_invoice",
        "copro_id": TILLEULS,
        "input_data": {"document_url": f"s3://{ALLOWED_BUCKET}/2025/huge.pdf"},
    }
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        huge = await small.post("/mcp/v1/execute", json=body, headers=RESIDENT)
    assert (huge.status_code, huge.json()["error"]) == (413, "document_too_large")
    # What the S3 server saw (its own request log).
    asked = [r.getMessage() for r in caplog.records if "huge.pdf" in r.getMessage()]
    assert any('"HEAD ' in line for line in asked), asked
    assert not any('"GET ' in line for line in asked), asked


async def test_without_a_configured_store_a_document_url_is_refused_saying_so(gateway: Client) -> None:
    client = await gateway(s3_endpoint_url="", s3_access_key_id="", s3_secret_access_key="")
    body = {
        "task_type": "ocr_invoice",
        "copro_id": TILLEULS,
        "input_data": {"document_url": f"s3://{ALLOWED_BUCKET}/f.pdf"},
    }

    response = await client.post("/mcp/v1/execute", json=body, headers=RESIDENT)

    assert response.status_code == 422
    assert response.json()["error"] == "document_store_not_configured"
    assert "no" in response.json()["message"] and "S3_ENDPOINT_URL" in response.json()["message"]


async def test_right_after_post_the_task_reads_pending_from_the_event_log_for_its_copro_only(
    gateway: Client,
) -> None:
    client = await gateway()
    body = {
        "task_type": "summarize_meeting",
        "copro_id": TILLEULS,
        "input_data": {"text": (FIXTURES / "pv-ag-2025-les-tilleuls.txt").read_text()},
    }
    task_id = (await client.post("/mcp/v1/execute", json=body, headers=RESIDENT)).json()["id"]

    response = await client.get(f"/mcp/v1/tasks/{task_id}", headers=RESIDENT)

    assert response.status_code == 200, response.text
    view = response.json()
    assert (view["id"], view["status"], view["attempts"], view["execution_type"]) == (
        task_id,
        "pending",
        [],
        "grid",
    )
    assert (view["task_type"], view["copro_id"], view["result"], view["error"]) == (
        "summarize_meeting",
        TILLEULS,
        None,
        None,
    )
    # An admin sees any copro's (the event log read across copros).
    assert (await client.get(f"/mcp/v1/tasks/{task_id}", headers=ADMIN)).json()["status"] == "pending"
    for path, headers in (
        (f"/mcp/v1/tasks/{task_id}", NEIGHBOUR),
        ("/mcp/v1/tasks/not-a-task", RESIDENT),
        (f"/mcp/v1/tasks/{uuid.uuid4()}", RESIDENT),
    ):
        refused = await client.get(path, headers=headers)
        assert (refused.status_code, refused.json()["error"]) == (404, "not_found"), path
    assert (await client.delete(f"/mcp/v1/tasks/{task_id}", headers=NEIGHBOUR)).status_code == 404


async def test_a_read_only_token_cannot_execute(gateway: Client) -> None:
    client = await gateway()
    body = {"task_type": "summarize_meeting", "copro_id": TILLEULS, "input_data": {"text": "PV"}}
    response = await client.post("/mcp/v1/execute", json=body, headers=READER)
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")
    assert "mcp:write" in response.json()["message"]
    unknown = await client.post("/mcp/v1/execute", json={**body, "task_type": "ocr"}, headers=RESIDENT)
    assert unknown.status_code == 422 and "predict_expenses" in unknown.json()["message"]


async def project(database_url: str, rows: list[dict[str, Any]]) -> None:
    """Write tasks as the ledger's projection would."""
    conn = await asyncpg.connect(database_url)
    try:
        for row in rows:
            await conn.execute(
                "INSERT INTO mcp_tasks (id, task_type, input_data, copro_id, status, result, error, error_message,"
                " co2_grams, attempts, created_at, updated_at) VALUES ($1, $2, '{}', $3, $4, $5, $6, $7, $8, $9, $10, $10)",
                uuid.UUID(row["id"]),
                row["task_type"],
                row["copro"],
                row["status"],
                json.dumps(row.get("result")) if row.get("result") is not None else None,
                row.get("error"),
                row.get("message"),
                row.get("co2", 0.0),
                len(row.get("attempts", [])),
                row["at"],
            )
            for n, (node, outcome) in enumerate(row.get("attempts", []), start=1):
                await conn.execute(
                    "INSERT INTO mcp_task_attempts (task_id, attempt, node_id, assigned_at, started_at, ended_at, outcome)"
                    " VALUES ($1, $2, $3, $4, $4, $5, $6)",
                    uuid.UUID(row["id"]),
                    n,
                    node,
                    row["at"],
                    row["at"] + timedelta(seconds=30),
                    outcome,
                )
    finally:
        await conn.close()


async def test_the_list_filters_the_callers_copro_by_status_type_and_time(
    gateway: Client, database_url: str
) -> None:
    client = await gateway()
    day = datetime(2025, 3, 18, 19, tzinfo=UTC)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    await project(
        database_url,
        [
            {
                "id": ids[0],
                "task_type": "ocr_invoice",
                "copro": TILLEULS,
                "status": "completed",
                "at": day,
                "result": {"total_incl_vat": "1 512,50"},
                "co2": 0.21,
                "attempts": [("pi-1", "node_lost"), ("pi-2", "completed")],
            },
            {
                "id": ids[1],
                "task_type": "summarize_meeting",
                "copro": TILLEULS,
                "status": "pending",
                "at": day + timedelta(hours=1),
            },
            {
                "id": ids[2],
                "task_type": "ocr_invoice",
                "copro": TILLEULS,
                "status": "failed",
                "at": day + timedelta(hours=2),
                "error": "unreadable",
                "message": "no text on the page",
                "attempts": [("pi-1", "input_error")],
            },
            {
                "id": ids[3],
                "task_type": "ocr_invoice",
                "copro": LINDE,
                "status": "pending",
                "at": day + timedelta(hours=3),
            },
            {
                "id": ids[4],
                "task_type": "predict_expenses",
                "copro": TILLEULS,
                "status": "running",
                "at": day + timedelta(days=2),
            },
        ],
    )

    async def listed(query: str, headers: dict[str, str] = RESIDENT) -> list[str]:
        response = await client.get(f"/mcp/v1/tasks{query}", headers=headers)
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()["tasks"]]

    assert await listed("") == [ids[4], ids[2], ids[1], ids[0]]
    assert await listed("?task_type=ocr_invoice") == [ids[2], ids[0]]
    assert await listed("?status=pending") == [ids[1]]
    assert await listed("?from=2025-03-18T19:30:00Z&to=2025-03-19") == [ids[2], ids[1]]
    assert await listed("?limit=2") == [ids[4], ids[2]]
    assert await listed("", NEIGHBOUR) == [ids[3]]
    for bad in (
        "?status=done",
        "?task_type=ocr",
        "?from=yesterday",
        "?limit=501",
        "?limit=0",
        "?from=2025-03-20&to=2025-03-19",
    ):
        response = await client.get(f"/mcp/v1/tasks{bad}", headers=RESIDENT)
        assert response.status_code == 422, bad

    done = (await client.get(f"/mcp/v1/tasks/{ids[0]}", headers=RESIDENT)).json()
    assert done["result"] == {"total_incl_vat": "1 512,50"} and done["co2_grams"] == 0.21
    assert [(a["node_id"], a["outcome"]) for a in done["attempts"]] == [
        ("pi-1", "node_lost"),
        ("pi-2", "completed"),
    ]
    assert done["attempts"][1]["ended_at"] is not None
    failed = (await client.get(f"/mcp/v1/tasks/{ids[2]}", headers=RESIDENT)).json()
    assert failed["error"] == {"error": "unreadable", "message": "no text on the page"}
    assert (await client.get(f"/mcp/v1/tasks/{ids[3]}", headers=RESIDENT)).status_code == 404


async def test_a_task_being_verified_reads_verifying_with_its_replicas(
    gateway: Client, database_url: str
) -> None:
    """The verification the ledger projects (`mcp_tasks.verification`) is what GET shows; one this
    gateway cannot read is shown as null, never a 500."""
    client = await gateway()
    at = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    verifying, unreadable = str(uuid.uuid4()), str(uuid.uuid4())
    await project(
        database_url,
        [
            {"id": verifying, "task_type": "ocr_invoice", "copro": TILLEULS, "status": "verifying", "at": at,
             "attempts": [("pi-cave", "completed"), ("pi-grenier", None)]},
            {"id": unreadable, "task_type": "ocr_invoice", "copro": TILLEULS, "status": "verifying", "at": at},
        ],
    )  # fmt: skip
    verification = {
        "policy": "quorum",
        "quorum": 2,
        "max_replicas": 4,
        "replicas": [
            {"attempt": 1, "node_id": "pi-cave", "owner": "olivia", "verdict": "pending", "co2_grams": 0.01},
            {"attempt": 2, "node_id": "pi-grenier", "owner": "bert", "verdict": "pending"},
        ],
        "agreement": 1,
        "outcome": "pending",
    }
    conn = await asyncpg.connect(database_url)
    try:
        for task_id, value in ((verifying, verification), (unreadable, {"policy": "by-vibes"})):
            await conn.execute(
                "UPDATE mcp_tasks SET verification = $2::jsonb WHERE id = $1",
                uuid.UUID(task_id),
                json.dumps(value),
            )
    finally:
        await conn.close()

    view = await client.get(f"/mcp/v1/tasks/{verifying}", headers=RESIDENT)
    odd = await client.get(f"/mcp/v1/tasks/{unreadable}", headers=RESIDENT)
    listed = await client.get("/mcp/v1/tasks?status=verifying", headers=RESIDENT)

    assert view.status_code == 200, view.text
    shown = view.json()
    assert shown["status"] == "verifying"
    assert (shown["verification"]["policy"], shown["verification"]["agreement"]) == ("quorum", 1)
    assert [(r["node_id"], r["owner"], r["verdict"]) for r in shown["verification"]["replicas"]] == [
        ("pi-cave", "olivia", "pending"),
        ("pi-grenier", "bert", "pending"),
    ]
    assert (odd.status_code, odd.json()["verification"]) == (200, None)
    assert sorted(t["id"] for t in listed.json()["tasks"]) == sorted([verifying, unreadable])
    assert (await client.get(f"/mcp/v1/tasks/{verifying}", headers=NEIGHBOUR)).status_code == 404


async def test_delete_publishes_the_cancel_and_a_final_task_is_a_409(
    gateway: Client, js: JetStreamContext, database_url: str
) -> None:
    client = await gateway()
    body = {
        "task_type": "translate_document",
        "copro_id": TILLEULS,
        "input_data": {"text": "Le toit sera refait.", "target_language": "nl"},
    }
    pending_id = (await client.post("/mcp/v1/execute", json=body, headers=RESIDENT)).json()["id"]
    done_id = str(uuid.uuid4())
    await project(
        database_url,
        [
            {
                "id": done_id,
                "task_type": "ocr_invoice",
                "copro": TILLEULS,
                "status": "completed",
                "at": datetime.now(UTC),
            }
        ],
    )

    response = await client.delete(f"/mcp/v1/tasks/{pending_id}", headers=RESIDENT)

    assert response.status_code == 202, response.text
    assert (response.json()["id"], response.json()["status"]) == (pending_id, "pending")
    msg = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.task_event("cancel_requested", TILLEULS))
    cancel = TaskCancelRequested.model_validate_json(msg.data or b"")
    assert (cancel.task_id, cancel.requested_by, cancel.copro_id) == (pending_id, "alice", TILLEULS)

    final = await client.delete(f"/mcp/v1/tasks/{done_id}", headers=RESIDENT)
    assert final.status_code == 409
    assert (final.json()["error"], final.json()["status"]) == ("task_final", "completed")
    assert (await client.delete(f"/mcp/v1/tasks/{done_id}", headers=READER)).status_code == 403


async def test_once_the_ledger_projects_a_task_get_list_and_delete_show_its_rows(
    gateway: Client,
    js: JetStreamContext,
    clean_jetstream: str,
    database_url: str,
    content_keys_env: dict[str, str],
) -> None:
    """With the real ledger projecting: the scheduler's and the node's steps, published as they
    publish them, are what GET shows (attempt, times, outcome, result, grams)."""
    stop = asyncio.Event()
    ledger_settings = LedgerSettings(
        nats_url=clean_jetstream, database_url=database_url, ops_port=0, **settings_fields(content_keys_env)
    )
    ledger = asyncio.create_task(run_ledger(ledger_settings, stop))
    try:
        client = await gateway()
        body = {
            "task_type": "translate_document",
            "copro_id": LINDE,
            "input_data": {"text": "De lift wordt in mei vervangen.", "target_language": "fr"},
        }
        task_id = (await client.post("/mcp/v1/execute", json=body, headers=NEIGHBOUR)).json()["id"]

        async def status() -> str | None:
            conn = await asyncpg.connect(database_url)
            try:
                value = await conn.fetchval("SELECT status FROM mcp_tasks WHERE id = $1", uuid.UUID(task_id))
                return str(value) if value is not None else None
            finally:
                await conn.close()

        await wait_until(status, timeout=30)
        source = "koprogo/grid-scheduler"
        assigned = TaskAssigned(
            id=task_event_id(task_id, "assigned:1"),
            source=source,
            copro_id=LINDE,
            task_id=task_id,
            task_type="translate_document",
            attempt=1,
            node_id="pi-7",
            deadline=datetime.now(UTC) + timedelta(minutes=5),
        )
        await publish_event(js, subjects.task_event("assigned", LINDE), assigned)
        started = TaskStarted(
            id=task_event_id(task_id, "started:1"),
            source="koprogo/node/pi-7",
            copro_id=LINDE,
            task_id=task_id,
            attempt=1,
            node_id="pi-7",
        )
        await publish_event(js, subjects.node_task_event("started", LINDE, "pi-7"), started)
        result = {"text": "L'ascenseur sera remplacé en mai.", "target_language": "fr"}
        completed = TaskCompleted(
            id=task_event_id(task_id, "completed"),
            source=source,
            copro_id=LINDE,
            task_id=task_id,
            task_type="translate_document",
            attempt=1,
            node_id="pi-7",
            result=result,
            usage=TaskUsage(prompt_tokens=40, completion_tokens=12, duration_s=3.5),
            co2_grams=0.004,
        )
        await publish_event(js, subjects.task_event("completed", LINDE), completed)

        async def projected_completed() -> bool:
            return await status() == "completed"

        await wait_until(projected_completed, timeout=30)
        view = (await client.get(f"/mcp/v1/tasks/{task_id}", headers=NEIGHBOUR)).json()
        assert (view["status"], view["result"], view["error"], view["co2_grams"]) == (
            "completed",
            result,
            None,
            0.004,
        )
        [attempt] = view["attempts"]
        assert (attempt["attempt"], attempt["node_id"], attempt["outcome"]) == (1, "pi-7", "completed")
        assert attempt["started_at"] is not None and attempt["ended_at"] is not None
        assert view["copro_id"] == LINDE and view["task_type"] == "translate_document"
        listed = (await client.get("/mcp/v1/tasks?status=completed", headers=NEIGHBOUR)).json()["tasks"]
        assert [t["id"] for t in listed] == [task_id]
        assert (await client.get(f"/mcp/v1/tasks/{task_id}", headers=RESIDENT)).status_code == 404
        final = await client.delete(f"/mcp/v1/tasks/{task_id}", headers=NEIGHBOUR)
        assert (final.status_code, final.json()["error"], final.json()["status"]) == (
            409,
            "task_final",
            "completed",
        )
    finally:
        stop.set()
        await asyncio.wait_for(ledger, timeout=30)


async def test_the_gateways_own_nats_identity_may_store_publish_and_read_back_a_task(
    gateway: Client, secured: SecuredNats
) -> None:
    """On a server that admits only known nkeys, with the gateway's permissions as `koprogo up`
    writes them: the object store, TaskSubmitted, the read-back by id and the cancel all pass."""
    async with connected_as(secured, "admin") as admin:
        await declare_grid_stores(admin.js)
    client = await gateway(nats_url=secured.url, nats_nkey_seed_file=str(secured.seed_files["gateway"]))
    body = {
        "task_type": "ocr_invoice",
        "copro_id": TILLEULS,
        "input_data": {"document": base64.b64encode(SCAN).decode(), "filename": "scan.png"},
    }

    response = await client.post("/mcp/v1/execute", json=body, headers=RESIDENT)

    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    pending = await client.get(f"/mcp/v1/tasks/{task_id}", headers=RESIDENT)
    assert (pending.status_code, pending.json()["status"]) == (200, "pending")
    assert (await client.get(f"/mcp/v1/tasks/{task_id}", headers=ADMIN)).json()["status"] == "pending"
    assert (await client.delete(f"/mcp/v1/tasks/{task_id}", headers=RESIDENT)).status_code == 202
    async with connected_as(secured, "admin") as admin:
        assert await stored_document(admin.js, task_id) == SCAN
        event = await submitted_event(admin.js, TILLEULS, task_id)
        assert event.document is not None and event.document.content_type == "image/png"
        msg = await admin.js.get_last_msg(
            subjects.EVENTS_STREAM, subjects.task_event("cancel_requested", TILLEULS)
        )
        assert TaskCancelRequested.model_validate_json(msg.data or b"").task_id == task_id


async def test_one_idempotency_key_submits_one_task_through_retries_and_a_gateway_restart(
    gateway: Client, js: JetStreamContext
) -> None:
    key = {"Idempotency-Key": f"execute-{uuid.uuid4()}"}
    csv = LINDE_CSV.replace(b"verwarming", b"chauffage")

    def upload(horizon: int = 6) -> dict[str, Any]:
        return {
            "data": {
                "task_type": "predict_expenses",
                "copro_id": TILLEULS,
                "input_data": json.dumps({"horizon_months": horizon}),
            },
            "files": {"document": ("charges.csv", csv, "text/csv")},
        }

    client = await gateway()
    first = await client.post("/mcp/v1/execute", **upload(), headers=RESIDENT | key)
    again = await client.post("/mcp/v1/execute", **upload(), headers=RESIDENT | key)
    # The same request as JSON, the document in base64 under the same name.
    as_json = await client.post(
        "/mcp/v1/execute",
        json={
            "task_type": "predict_expenses",
            "copro_id": TILLEULS,
            "input_data": {
                "horizon_months": 6,
                "document": base64.b64encode(csv).decode(),
                "filename": "charges.csv",
            },
        },
        headers=RESIDENT | key,
    )
    # A new gateway (nothing in its memory): the key's entry is in NATS.
    restarted = await gateway()
    after_restart = await restarted.post("/mcp/v1/execute", **upload(), headers=RESIDENT | key)
    reused = await restarted.post("/mcp/v1/execute", **upload(horizon=12), headers=RESIDENT | key)
    # Keys are per user: another resident of the same copro with the same key gets a task of their own.
    other_user = bearer(token(user="dave", copros=[TILLEULS], ttl=DAY))
    theirs = await restarted.post("/mcp/v1/execute", **upload(), headers=other_user | key)

    assert first.status_code == 202, first.text
    task_id = first.json()["id"]
    assert "idempotent-replayed" not in first.headers
    for replay in (again, as_json, after_restart):
        assert replay.status_code == 202, replay.text
        assert replay.json() == first.json()
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.headers["location"] == f"/mcp/v1/tasks/{task_id}"
        assert "ratelimit" in replay.headers
    assert reused.status_code == 422 and reused.json()["error"] == "idempotency_key_reused", reused.text
    assert theirs.status_code == 202 and theirs.json()["id"] != task_id, theirs.text
    info = await js.stream_info(
        subjects.EVENTS_STREAM, subjects_filter=subjects.task_submitted_key(TILLEULS, task_id)
    )
    assert sum((info.state.subjects or {}).values()) == 1, "one TaskSubmitted for the key's task"
    assert await task_events(js) == 2, "the key's task and the other user's, nothing else"
    assert await stored_document(js, task_id) == csv
