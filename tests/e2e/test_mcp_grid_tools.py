"""The MCP tools that run grid tasks (`ocr_invoice`, `predict_expenses`, `summarize_meeting`,
`translate_document`, `get_task`), driven by the official MCP client over streamable HTTP against
a real gateway, grid scheduler and edge node (real OCR, statsmodels, the bundled model)."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable
from pathlib import Path

import asyncpg

from tests.conftest import wait_until
from tests.e2e.test_mcp_server import COPRO, OTHER_COPRO, StackFactory, error_text, mcp_session, structured
from tests.token_support import AUTH_SETTINGS, token

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
CHARGES = FIXTURES / "charges-les-tilleuls-2022-2024.csv"


def wide_csv_of_another_building() -> str:
    """A Ghent building's charges, one column per category, `;`-separated with decimal commas,
    as a Belgian spreadsheet exports them; 26 months."""
    lines = ["maand;verwarming;schoonmaak;lift"]
    for i in range(26):
        year, month = 2023 + i // 12, i % 12 + 1
        heating = 2400 + (1100 if month in (1, 2, 12) else 0) + 11 * i
        lines.append(f"{month:02d}/{year};{heating},40;640,00;{185 + (i % 3) * 5},75")
    return "\n".join(lines) + "\n"


async def tasks_in_db(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM mcp_tasks"))
    finally:
        await conn.close()


async def _equals(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def test_grid_tools_run_tasks_on_the_grid_and_return_their_results(stack_factory: StackFactory) -> None:
    resident = token(user="resident-grid", copros=[COPRO])
    stack = await stack_factory(grid=True, probe_token=resident, **AUTH_SETTINGS)
    async with mcp_session(stack, resident) as session:
        # The fixture's CSV as text.
        forecast = structured(
            await session.call_tool(
                "predict_expenses", {"csv": CHARGES.read_text(), "horizon_months": 6, "copro_id": COPRO}
            )
        )
        assert forecast["status"] == "completed" and forecast["execution_type"] == "grid"
        assert forecast["task_type"] == "predict_expenses" and forecast["copro_id"] == COPRO
        assert forecast["attempts"][-1]["node_id"] == "edge-test-0"
        assert len(forecast["result"]["categories"]) == 6
        assert all(len(c["forecast"]) == 6 for c in forecast["result"]["categories"].values())

        # Another building, in the wide form with Belgian decimals; the token's only copro by default.
        ghent = structured(
            await session.call_tool("predict_expenses", {"csv": wide_csv_of_another_building()})
        )
        assert ghent["status"] == "completed", ghent
        assert set(ghent["result"]["categories"]) == {"verwarming", "schoonmaak", "lift"}
        assert ghent["result"]["first_forecast_month"] == "2025-03"
        assert [m["mean"] for m in ghent["result"]["categories"]["schoonmaak"]["forecast"][:2]] == [
            640.0,
            640.0,
        ]

        # The same as a JSON history; not waited for: pending, then followed with get_task.
        history = [
            {"month": f"{2022 + i // 12}-{i % 12 + 1:02d}", "category": "assurance", "amount": 410.0 + i}
            for i in range(18)
        ]
        queued = structured(
            await session.call_tool(
                "predict_expenses", {"history": history, "horizon_months": 2, "wait_seconds": 0}
            )
        )
        assert queued["status"] in ("pending", "assigned", "running") and queued["result"] is None

        async def ended() -> bool:
            task = structured(await session.call_tool("get_task", {"task_id": queued["id"]}))
            return bool(task["status"] == "completed")

        await wait_until(ended, timeout=60, interval=0.5)
        followed = structured(await session.call_tool("get_task", {"task_id": queued["id"]}))
        assert [m["month"] for m in followed["result"]["total"]] == ["2023-07", "2023-08"]

        invoice = EXPECTED["facture-chauffage-F-2025-0142"]
        pdf = (FIXTURES / "facture-chauffage-F-2025-0142.pdf").read_bytes()
        read = structured(
            await session.call_tool(
                "ocr_invoice",
                {
                    "document": base64.b64encode(pdf).decode(),
                    "filename": "F-2025-0142.pdf",
                    "wait_seconds": 120,
                },
            )
        )
        assert read["status"] == "completed", read
        fields = read["result"]["fields"]
        assert fields["invoice_number"]["value"] == invoice["invoice_number"]
        assert fields["total_incl_vat"]["value"] == invoice["total"]
        # A scan over the 1 MiB general body limit: /mcp takes a task's document as execute does.
        scan = _uncompressed_png(FIXTURES / "facture-chauffage-F-2025-0142-scan.png")
        assert len(scan) > 2 * 1024 * 1024
        scanned = structured(
            await session.call_tool(
                "ocr_invoice",
                {"document": base64.b64encode(scan).decode(), "filename": "scan.png", "wait_seconds": 120},
            )
        )
        assert scanned["status"] == "completed", scanned
        assert scanned["result"]["fields"]["invoice_number"]["value"] == invoice["invoice_number"]

        translated = structured(
            await session.call_tool(
                "translate_document",
                {
                    "text": "The lift will be out of service on 14 March 2025.\n\nThe repair costs 2 350 €.",
                    "target_language": "fr",
                    "wait_seconds": 120,
                },
            )
        )
        assert translated["status"] == "completed", translated
        assert (
            translated["result"]["target_language"] == "fr"
            and translated["result"]["source_language"] == "en"
        )
        assert translated["result"]["text"].strip() and translated["result"]["paragraphs"] == 2

        # Refusals: the node's (the task failed, its id and error named), the gateway's (nothing ran).
        bad = [dict(h) for h in history]
        bad[4]["amount"] = -12
        failed = error_text(await session.call_tool("predict_expenses", {"history": bad}))
        assert ": task " in failed and " failed: invalid_input: history[4]: " in failed
        csv_bytes = base64.b64encode(CHARGES.read_bytes()).decode()
        refused = error_text(await session.call_tool("ocr_invoice", {"document": csv_bytes}))
        assert "unsupported_document (422)" in refused
        both = error_text(
            await session.call_tool("predict_expenses", {"history": history, "csv": "month,a\n"})
        )
        assert "either 'history' or 'csv'" in both

    outsider = token(user="outsider", copros=[OTHER_COPRO])
    async with mcp_session(stack, outsider) as session:
        hidden = error_text(await session.call_tool("get_task", {"task_id": forecast["id"]}))
        assert "not_found (404)" in hidden
        elsewhere = error_text(
            await session.call_tool("predict_expenses", {"history": history, "copro_id": COPRO})
        )
        assert "forbidden (403)" in elsewhere


async def test_grid_tools_keep_the_http_apis_scopes(stack_factory: StackFactory) -> None:
    reader = token(user="reader-grid", copros=[COPRO], scopes=("mcp:read",))
    stack = await stack_factory(grid=True, edge_nodes=0, **AUTH_SETTINGS)
    history = [{"month": f"2024-{m:02d}", "category": "eau", "amount": 90.0 + m} for m in range(1, 13)]
    async with mcp_session(stack, reader) as session:
        for tool, arguments in (
            ("predict_expenses", {"history": history}),
            ("ocr_invoice", {"document": base64.b64encode(b"%PDF-1.4\n").decode()}),
            ("summarize_meeting", {"text": "Le PV."}),
            ("translate_document", {"text": "Le PV.", "target_language": "nl"}),
        ):
            refused = error_text(await session.call_tool(tool, arguments))
            assert "forbidden (403)" in refused and "mcp:write" in refused, (tool, refused)
    # Without mcp:read the result could not be read back: refused before anything is submitted.
    writer = token(user="writer-grid", copros=[COPRO], scopes=("mcp:write",))
    async with mcp_session(stack, writer) as session:
        refused = error_text(await session.call_tool("predict_expenses", {"history": history}))
        assert "forbidden (403)" in refused and "mcp:read" in refused
        unread = error_text(
            await session.call_tool("get_task", {"task_id": "8c1f7e0a-1b2c-4d3e-9f40-5a6b7c8d9e0f"})
        )
        assert "mcp:read" in unread
    both = token(user="resident-grid", copros=[COPRO])
    async with mcp_session(stack, both) as session:
        # No node: the wait is bounded, the task comes back pending for get_task to follow.
        pending = structured(
            await session.call_tool("predict_expenses", {"history": history, "wait_seconds": 1})
        )
        assert pending["status"] == "pending" and pending["attempts"] == []
        assert (
            structured(await session.call_tool("get_task", {"task_id": pending["id"]}))["id"] == pending["id"]
        )
        unknown = error_text(await session.call_tool("get_task", {"task_id": "not-a-task"}))
        assert "not_found (404)" in unknown
    # The ledger projected this one task: none of the refused calls submitted anything.
    await wait_until(lambda: _equals(tasks_in_db(stack.database_url), 1), timeout=15)
    assert await tasks_in_db(stack.database_url) == 1


def _uncompressed_png(path: Path) -> bytes:
    """The same page saved without compression: the same pixels, about 2 MB."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(path).save(out, "PNG", compress_level=0)
    return out.getvalue()
