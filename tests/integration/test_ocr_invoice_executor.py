"""The `ocr_invoice` executor with its real engines: pdfplumber, pypdfium2, rapidocr, and the
bundled SmolLM2 for the fallback. Documents: the shared fixtures, and invoices of other
suppliers and languages made by tests/invoice_documents.py (as PDF, degraded scan, scanned PDF).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from koprogo_node.adapters.llama_engine import LlamaEngine
from koprogo_node.adapters.tasks.ocr_engine import RapidOcrEngine
from koprogo_node.adapters.tasks.pdf_text import read_pdf_text
from koprogo_node.domain.tasks.iban import iban_checksum_ok
from koprogo_node.domain.tasks.local_formats import find_amounts, find_dates
from koprogo_node.domain.tasks.page_layout import rows_of
from koprogo_node.service_layer.tasks.executor import (
    JPEG,
    PDF,
    PNG,
    TEXT,
    TIFF,
    TaskCancelledError,
    TaskDocument,
    TaskInputError,
    TaskRun,
)
from koprogo_node.service_layer.tasks.ocr_invoice import OcrInvoiceExecutor
from tests.invoice_documents import (
    SPARSE,
    SPECS,
    InvoiceSpec,
    degraded_scan,
    invoice_pdf,
    scanned_pdf,
    with_bad_iban,
    with_wrong_total,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
INVOICE = "facture-chauffage-F-2025-0142"


@pytest.fixture(scope="module")
def executor() -> OcrInvoiceExecutor:
    return OcrInvoiceExecutor(ocr=RapidOcrEngine(), engine=None)


async def extracted(executor: OcrInvoiceExecutor, data: bytes, content_type: str) -> dict[str, Any]:
    output = await executor.run(TaskRun(parameters={}, document=TaskDocument(data, content_type)))
    json.dumps(output.result)  # what goes on the wire is JSON
    return output.result


def read_values(result: dict[str, Any]) -> dict[str, Any]:
    return {name: field["value"] for name, field in result["fields"].items()}


def fixture_truth() -> dict[str, Any]:
    truth = json.loads((FIXTURES / "expected.json").read_text())[INVOICE]

    def iso(text: str) -> str:
        return datetime.strptime(text, "%d/%m/%Y").date().isoformat()

    return {
        "supplier": truth["supplier"],
        "supplier_vat_id": truth["supplier_vat_id"],
        "invoice_number": truth["invoice_number"],
        "issue_date": iso(truth["date"]),
        "due_date": iso(truth["due_date"]),
        "total_excl_vat": float(truth["total_excl_vat"]),
        "vat_rate": float(truth["vat_rate"]),
        "vat": float(truth["vat"]),
        "total_incl_vat": float(truth["total"]),
        "currency": truth["currency"],
        "iban": truth["iban"],
    }


def spec_truth(spec: InvoiceSpec) -> dict[str, Any]:
    return {
        "supplier": spec.supplier,
        "supplier_vat_id": spec.supplier_vat_id,
        "invoice_number": spec.number,
        "issue_date": spec.issued.isoformat(),
        "due_date": spec.due.isoformat(),
        "total_excl_vat": float(spec.total_excl),
        "vat_rate": float(spec.vat_rate),
        "vat": float(spec.vat),
        "total_incl_vat": float(spec.total_incl),
        "currency": "EUR",
        "iban": spec.iban,
    }


def assert_well_formed(result: dict[str, Any], text_source: str) -> None:
    assert result["text_source"] == text_source
    assert result["pages"] == 1
    for field in result["fields"].values():
        assert 0.0 <= field["confidence"] <= 1.0
        assert field["source"] == text_source
    assert set(result["missing"]).isdisjoint(result["fields"])


async def test_the_fixture_pdf_gives_every_expected_field(executor: OcrInvoiceExecutor) -> None:
    result = await extracted(executor, (FIXTURES / f"{INVOICE}.pdf").read_bytes(), PDF)

    assert_well_formed(result, "pdf_text")
    assert read_values(result) == fixture_truth()
    assert result["missing"] == []
    assert result["checks"] == {"iban_checksum": "ok", "totals": "ok", "vat_rate": "ok"}


async def test_the_fixture_scan_is_read_by_ocr_with_every_expected_field(
    executor: OcrInvoiceExecutor,
) -> None:
    started = time.perf_counter()
    result = await extracted(executor, (FIXTURES / f"{INVOICE}-scan.png").read_bytes(), PNG)
    elapsed = time.perf_counter() - started

    assert_well_formed(result, "ocr")
    found, truth = read_values(result), fixture_truth()
    for name in ("invoice_number", "issue_date", "total_excl_vat", "vat", "total_incl_vat"):
        assert found.get(name) == truth[name], name
    assert found == truth
    assert result["checks"] == {"iban_checksum": "ok", "totals": "ok", "vat_rate": "ok"}
    print(f"\nOCR of the fixture scan, extraction included: {elapsed:.2f} s")


@pytest.mark.parametrize("name", sorted(SPECS))
async def test_other_suppliers_invoices_as_pdf_give_every_field(
    executor: OcrInvoiceExecutor, name: str
) -> None:
    spec = SPECS[name]
    result = await extracted(executor, invoice_pdf(spec), PDF)

    assert_well_formed(result, "pdf_text")
    assert read_values(result) == spec_truth(spec)
    assert result["checks"] == {"iban_checksum": "ok", "totals": "ok", "vat_rate": "ok"}


@pytest.mark.parametrize("name", sorted(SPECS))
async def test_other_suppliers_invoices_as_degraded_scans(executor: OcrInvoiceExecutor, name: str) -> None:
    spec = SPECS[name]
    result = await extracted(executor, degraded_scan(invoice_pdf(spec), seed=len(name)), PNG)

    assert_well_formed(result, "ocr")
    found, truth = read_values(result), spec_truth(spec)
    # The fields a syndic books an invoice with are read right...
    for field in ("invoice_number", "issue_date", "total_excl_vat", "vat", "total_incl_vat", "vat_rate"):
        assert found.get(field) == truth[field], field
    # ... and whatever else is read is right too (a misread letter in a name aside), never made up.
    for field, value in found.items():
        if field == "supplier":
            assert SequenceMatcher(None, value, truth[field]).ratio() >= 0.9, value
        else:
            assert value == truth[field], field
    assert len(found) >= 9, result["missing"]


async def test_a_scanned_pdf_without_text_layer_goes_through_ocr(executor: OcrInvoiceExecutor) -> None:
    spec = SPECS["en_cleaning"]
    result = await extracted(executor, scanned_pdf(degraded_scan(invoice_pdf(spec), seed=3)), PDF)

    assert_well_formed(result, "ocr")
    found, truth = read_values(result), spec_truth(spec)
    for field in ("invoice_number", "issue_date", "total_excl_vat", "vat", "total_incl_vat"):
        assert found.get(field) == truth[field], field


@pytest.mark.parametrize("name", ["fr_ascenseurs", "nl_loodgieter"])
async def test_a_mistyped_iban_is_reported_as_printed_and_flagged(
    executor: OcrInvoiceExecutor, name: str
) -> None:
    spec = with_bad_iban(SPECS[name])
    assert not iban_checksum_ok(spec.iban)
    result = await extracted(executor, invoice_pdf(spec), PDF)

    assert result["fields"]["iban"]["value"] == spec.iban
    assert result["checks"]["iban_checksum"] == "failed"
    assert result["checks"]["totals"] == "ok"


async def test_totals_that_do_not_add_up_are_flagged_and_kept_as_printed(
    executor: OcrInvoiceExecutor,
) -> None:
    spec = with_wrong_total(SPECS["nl_schilder"])
    result = await extracted(executor, invoice_pdf(spec), PDF)

    found = read_values(result)
    assert found["total_incl_vat"] == float(spec.total_incl) == float(spec.total_excl + spec.vat) + 10
    assert (found["total_excl_vat"], found["vat"]) == (float(spec.total_excl), float(spec.vat))
    assert result["checks"] == {"iban_checksum": "ok", "totals": "failed", "vat_rate": "ok"}


async def test_a_jpeg_scan_and_a_two_page_tiff_are_read(executor: OcrInvoiceExecutor) -> None:
    spec = SPECS["nl_loodgieter"]
    scan = Image.open(io.BytesIO(degraded_scan(invoice_pdf(spec), seed=5, angle=-1.2)))
    jpeg, tiff = io.BytesIO(), io.BytesIO()
    scan.convert("RGB").save(jpeg, format="JPEG", quality=80)
    blank = Image.new("L", scan.size, 255)
    scan.save(tiff, format="TIFF", save_all=True, append_images=[blank])

    from_jpeg = await extracted(executor, jpeg.getvalue(), JPEG)
    from_tiff = await extracted(executor, tiff.getvalue(), TIFF)

    truth = spec_truth(spec)
    assert (from_jpeg["pages"], from_tiff["pages"]) == (1, 2)
    for result in (from_jpeg, from_tiff):
        found = read_values(result)
        for field in ("invoice_number", "issue_date", "total_excl_vat", "vat", "total_incl_vat"):
            assert found.get(field) == truth[field], field


async def test_two_scans_read_at_once_give_what_each_gives_alone(executor: OcrInvoiceExecutor) -> None:
    scans = [degraded_scan(invoice_pdf(SPECS[name]), seed=9) for name in ("en_cleaning", "fr_ascenseurs")]
    alone = [await extracted(executor, scan, PNG) for scan in scans]

    together = await asyncio.gather(*(extracted(executor, scan, PNG) for scan in scans))

    assert list(together) == alone


async def test_a_cancelled_run_stops_before_reading_a_page(executor: OcrInvoiceExecutor) -> None:
    run = TaskRun(parameters={}, document=TaskDocument((FIXTURES / f"{INVOICE}-scan.png").read_bytes(), PNG))
    run.cancelled.set()
    with pytest.raises(TaskCancelledError):
        await executor.run(run)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (None, "needs a document"),
        (TaskDocument(b"Facture n 12", TEXT), "text/plain"),
        (TaskDocument(b"<html></html>", "text/html"), "text/html"),
        (TaskDocument(b"%PDF-1.7 this is not a PDF", PDF), "not a readable PDF"),
        (TaskDocument(b"\x89PNG\r\n\x1a\n truncated", PNG), "not a readable image"),
    ],
)
async def test_what_cannot_be_read_is_a_task_input_error(
    executor: OcrInvoiceExecutor, document: TaskDocument | None, message: str
) -> None:
    with pytest.raises(TaskInputError) as raised:
        await executor.run(TaskRun(parameters={}, document=document))
    assert message in raised.value.message


@pytest.fixture(scope="module")
async def model(bundled_model_path: Path) -> AsyncIterator[LlamaEngine]:
    engine = LlamaEngine(bundled_model_path, n_ctx=2048)
    await engine.load()
    yield engine
    await engine.close()


async def test_the_model_is_not_asked_when_the_rules_found_everything(model: LlamaEngine) -> None:
    executor = OcrInvoiceExecutor(ocr=RapidOcrEngine(), engine=model)
    output = await executor.run(
        TaskRun(parameters={}, document=TaskDocument(invoice_pdf(SPECS["en_cleaning"]), PDF))
    )

    assert output.result["missing"] == []
    assert output.prompt_tokens == output.completion_tokens == 0


async def test_the_model_only_fills_missing_fields_with_values_the_document_holds(model: LlamaEngine) -> None:
    pdf = invoice_pdf(SPARSE)
    without_model = await extracted(OcrInvoiceExecutor(ocr=RapidOcrEngine()), pdf, PDF)
    assert {"invoice_number", "due_date", "supplier_vat_id"} <= set(without_model["missing"])

    output = await OcrInvoiceExecutor(ocr=RapidOcrEngine(), engine=model).run(
        TaskRun(parameters={}, document=TaskDocument(pdf, PDF))
    )

    assert output.prompt_tokens > 0 and output.completion_tokens > 0  # asked, counts from its tokenizer
    result = output.result
    lines = read_pdf_text(pdf).lines or []
    text = "\n".join(row.text for row in rows_of(lines))
    for name, field in result["fields"].items():
        if name in without_model["fields"]:
            assert field == without_model["fields"][name]  # the rules' fields are never overridden
            continue
        # What the model adds is marked as its own, and is something the document prints.
        assert (field["source"], field["confidence"]) == ("model", 0.3)
        if name in ("issue_date", "due_date"):
            assert field["value"] in {d.isoformat() for _, d in find_dates(text)}
        elif name in ("total_excl_vat", "vat", "total_incl_vat"):
            assert field["value"] in {float(v) for _, v, _ in find_amounts(text)}
        else:
            assert str(field["value"]).replace(" ", "") in text.replace(" ", ""), field
    # No VAT id is printed: whatever the model says, none can be kept.
    assert "supplier_vat_id" in result["missing"]
    assert set(result["missing"]) == set(without_model["missing"]) - set(result["fields"])
