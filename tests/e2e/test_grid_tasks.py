"""Grid tasks end to end: `POST /mcp/v1/execute` → the scheduler → a real edge node (bundled model,
real OCR, real statsmodels) → the ledger → `GET /mcp/v1/tasks/{id}` and `/mcp/v1/stats`, on the
documents of ../shared/fixtures."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.e2e.test_chat_path import COPRO, StackFactory

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
FINAL = {"completed", "failed", "expired", "cancelled"}


async def finished(client: httpx.AsyncClient, task_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = (await client.get(f"/mcp/v1/tasks/{task_id}")).json()
        if task["status"] in FINAL:
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {task['status']} after {timeout}s: {task}")
        await asyncio.sleep(0.25)


async def execute(
    client: httpx.AsyncClient, task_type: str, upload: Path | None = None, **input_data: Any
) -> str:
    """Submit a task: `upload` as a multipart file part, else `input_data` as JSON."""
    if upload is not None:
        response = await client.post(
            "/mcp/v1/execute",
            data={"task_type": task_type, "copro_id": COPRO, "input_data": json.dumps(input_data)},
            files={"document": (upload.name, await asyncio.to_thread(upload.read_bytes))},
        )
    else:
        body = {"task_type": task_type, "input_data": input_data, "copro_id": COPRO}
        response = await client.post("/mcp/v1/execute", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "pending" and accepted["result"] is None
    return str(accepted["id"])


def iso(dmy: str) -> str:
    day, month, year = (int(p) for p in dmy.split("/"))
    return date(year, month, day).isoformat()


async def test_every_task_type_runs_on_a_real_node_and_stats_count_it_as_grid_work(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(grid=True)
    client = stack.client
    invoice = EXPECTED["facture-chauffage-F-2025-0142"]
    pdf = await execute(client, "ocr_invoice", FIXTURES / "facture-chauffage-F-2025-0142.pdf")
    scan = await execute(client, "ocr_invoice", FIXTURES / "facture-chauffage-F-2025-0142-scan.png")
    minutes = await asyncio.to_thread((FIXTURES / "pv-ag-2025-les-tilleuls.txt").read_text)
    summary = await execute(client, "summarize_meeting", text=minutes)
    csv_bytes = await asyncio.to_thread((FIXTURES / "charges-les-tilleuls-2022-2024.csv").read_bytes)
    csv = base64.b64encode(csv_bytes).decode()
    forecast = await execute(client, "predict_expenses", document=csv, horizon_months=6)
    translation = await execute(
        client,
        "translate_document",
        text="Le budget des charges courantes est fixé à 49 500 €.\n\nLa séance est levée à 21 h 40.",
        target_language="nl",
    )

    done = {
        name: await finished(client, task_id)
        for name, task_id in [
            ("pdf", pdf),
            ("scan", scan),
            ("summary", summary),
            ("forecast", forecast),
            ("translation", translation),
        ]
    }
    for name, task in done.items():
        assert task["status"] == "completed", (name, task)
        assert task["execution_type"] == "grid"
        assert (
            task["attempts"][-1]["node_id"] == "edge-test-0"
            and task["attempts"][-1]["outcome"] == "completed"
        )
        assert task["co2_grams"] >= 0

    fields = done["pdf"]["result"]["fields"]
    assert fields["invoice_number"]["value"] == invoice["invoice_number"]
    assert fields["issue_date"]["value"] == iso(invoice["date"])
    assert fields["due_date"]["value"] == iso(invoice["due_date"])
    assert fields["total_excl_vat"]["value"] == pytest.approx(invoice["total_excl_vat"])
    assert fields["vat"]["value"] == pytest.approx(invoice["vat"])
    assert fields["total_incl_vat"]["value"] == pytest.approx(invoice["total"])
    assert fields["iban"]["value"] == invoice["iban"]
    assert fields["supplier"]["value"] == invoice["supplier"]
    assert fields["supplier_vat_id"]["value"] == invoice["supplier_vat_id"]
    scanned = done["scan"]["result"]["fields"]
    assert scanned["invoice_number"]["value"] == invoice["invoice_number"]
    assert scanned["issue_date"]["value"] == iso(invoice["date"])
    assert scanned["total_incl_vat"]["value"] == pytest.approx(invoice["total"])
    assert scanned["total_excl_vat"]["value"] == pytest.approx(invoice["total_excl_vat"])

    summarised = done["summary"]["result"]
    decision_text = " ".join(json.dumps(d, ensure_ascii=False) for d in summarised["decisions"])
    for amount in ("18 450", "10 324,50", "49 500"):
        assert amount in decision_text, amount
    assert any("bornes de recharge" in title.lower() for title in summarised["no_vote"])
    assert summarised["summary"]

    categories = done["forecast"]["result"]["categories"]
    assert len(categories) == 6
    heating = categories["chauffage"]["forecast"]
    assert len(heating) == 6 and all(m["lower_95"] <= m["mean"] <= m["upper_95"] for m in heating)

    translated = done["translation"]["result"]
    assert translated["target_language"] == "nl" and translated["text"].strip()

    async def counted() -> bool:
        stats = (await client.get("/mcp/v1/stats")).json()
        return bool(stats["grid_requests"] == 5)

    await wait_until(counted, timeout=15)
    listed = (await client.get("/mcp/v1/tasks", params={"status": "completed"})).json()
    assert {t["id"] for t in listed["tasks"]} >= {pdf, scan, summary, forecast, translation}


async def test_bad_input_found_by_the_node_fails_the_task_with_the_row_named(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(grid=True)
    history = [
        {"month": "2024-01", "category": "chauffage", "amount": 100.0},
        {"month": "2024-02", "category": "chauffage", "amount": "beaucoup"},
    ]
    task_id = await execute(stack.client, "predict_expenses", history=history)
    task = await finished(stack.client, task_id)
    assert task["status"] == "failed"
    assert task["error"]["error"] == "invalid_input"
    assert "1" in task["error"]["message"] or "2" in task["error"]["message"]
    # No other node tried for an input nobody can process, and the attempt says why it ended.
    assert [a["outcome"] for a in task["attempts"]] == ["input_error"]


async def test_a_task_cancelled_while_pending_never_runs(stack_factory: StackFactory) -> None:
    stack = await stack_factory(grid=True, edge_nodes=0)
    task_id = await execute(
        stack.client, "predict_expenses", history=[{"month": "2024-01", "category": "a", "amount": 1}]
    )
    response = await stack.client.delete(f"/mcp/v1/tasks/{task_id}")
    assert response.status_code == 202, response.text
    task = await finished(stack.client, task_id, timeout=30)
    assert task["status"] == "cancelled" and task["attempts"] == []
    again = await stack.client.delete(f"/mcp/v1/tasks/{task_id}")
    assert again.status_code == 409


async def test_documents_of_another_building_supplier_and_language_come_out_right(
    stack_factory: StackFactory,
) -> None:
    """Not the fixtures: a Flemish plumber's invoice as a degraded scan, and Dutch minutes."""
    from tests.invoice_documents import SPECS, degraded_scan, invoice_pdf
    from tests.unit.minutes_samples import DE_LINDEN_NL

    stack = await stack_factory(grid=True)
    spec = SPECS["nl_loodgieter"]
    scan = await asyncio.to_thread(lambda: degraded_scan(invoice_pdf(spec), seed=7))
    response = await stack.client.post(
        "/mcp/v1/execute",
        data={"task_type": "ocr_invoice", "copro_id": COPRO},
        files={"document": ("factuur-janssens.png", scan)},
    )
    assert response.status_code == 202, response.text
    invoice_id = response.json()["id"]
    minutes_id = await execute(stack.client, "summarize_meeting", text=DE_LINDEN_NL)

    invoice = await finished(stack.client, invoice_id)
    assert invoice["status"] == "completed", invoice
    fields = invoice["result"]["fields"]
    assert fields["invoice_number"]["value"] == spec.number
    assert fields["total_incl_vat"]["value"] == pytest.approx(float(spec.total_incl))
    assert fields["total_excl_vat"]["value"] == pytest.approx(float(spec.total_excl))
    assert fields["issue_date"]["value"] == spec.issued.isoformat()

    minutes = await finished(stack.client, minutes_id)
    assert minutes["status"] == "completed", minutes
    summary = minutes["result"]
    assert summary["language"] == "nl" and summary["meeting_date"] == "2025-06-12"
    decided = " ".join(json.dumps(d, ensure_ascii=False) for d in summary["decisions"])
    assert "84.300,00" in decided and "Bouwwerken Janssens BV" in decided
    assert any(d["vote"] == "rejected" for d in summary["decisions"])  # the second lift
    assert any("zonnepanelen" in title.lower() for title in summary["no_vote"])
