"""The grid task's pure rules: what a document is (sniffed from its bytes), what each task type
needs, document URLs, task ids and the list's filters."""

from __future__ import annotations

import base64
import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from koprogo_gateway.domain.document_types import CSV, JPEG, PDF, PNG, TEXT, TIFF, sniff_content_type
from koprogo_gateway.domain.errors import (
    DocumentTooLargeError,
    DocumentUrlError,
    InvalidQueryError,
    InvalidTaskRequestError,
    RequestTooLargeError,
    TaskNotFoundError,
    UnsupportedDocumentError,
)
from koprogo_gateway.domain.task_request import (
    S3Location,
    check_parameters_size,
    check_task_input,
    filename_of,
    inline_document,
    parameters_of,
    parse_document_url,
    parse_task_id,
    parse_task_type,
    require_allowed_bucket,
)
from koprogo_gateway.domain.task_view import parse_task_query

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


def png_bytes(width: int = 4, height: int = 3) -> bytes:
    """A real (tiny, grey) PNG, written by hand: signature, IHDR, IDAT, IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    rows = b"".join(b"\x00" + bytes([128] * width) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def pdf_bytes(text: str) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text=text)
    return bytes(pdf.output())


DUTCH_MINUTES = (
    "NOTULEN VAN DE ALGEMENE VERGADERING\n"
    "VME Residentie De Linde — Lindelaan 12, 2000 Antwerpen\n"
    "Beslissing 1: vervanging van de lift goedgekeurd (meerderheid van 3/4), budget 48 500 euro.\n"
    "Punt 4 besproken zonder stemming.\n"
)


# --- sniffing ------------------------------------------------------------------------------


def test_the_fixture_invoice_pdf_and_its_scan_are_sniffed_from_their_bytes() -> None:
    assert sniff_content_type((FIXTURES / "facture-chauffage-F-2025-0142.pdf").read_bytes()) == PDF
    assert sniff_content_type((FIXTURES / "facture-chauffage-F-2025-0142-scan.png").read_bytes()) == PNG


def test_a_pdf_of_another_supplier_made_here_is_a_pdf_whatever_its_name() -> None:
    data = pdf_bytes("Facture 2025-77 Ascenseurs Dupont SA - total 1 210,00 EUR")
    assert sniff_content_type(data, "scan.png") == PDF


def test_images_are_told_apart_by_their_magic_numbers() -> None:
    assert sniff_content_type(png_bytes(), "invoice.pdf") == PNG
    assert sniff_content_type(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64)) == JPEG
    assert sniff_content_type(b"II*\x00\x08\x00\x00\x00" + bytes(64)) == TIFF
    assert sniff_content_type(b"MM\x00*\x00\x00\x00\x08" + bytes(64)) == TIFF


def test_minutes_in_french_and_dutch_are_plain_text_and_the_charges_are_csv() -> None:
    assert sniff_content_type((FIXTURES / "pv-ag-2025-les-tilleuls.txt").read_bytes()) == TEXT
    assert sniff_content_type(DUTCH_MINUTES.encode()) == TEXT
    assert sniff_content_type((FIXTURES / "charges-les-tilleuls-2022-2024.csv").read_bytes()) == CSV


def test_a_semicolon_csv_exported_by_a_belgian_spreadsheet_is_csv_even_unnamed() -> None:
    rows = [
        "maand;categorie;bedrag",
        "2023-01;verwarming;4 120,50",
        "2023-01;lift;260,00",
        "2023-02;schoonmaak;580,10",
    ]
    data = ("\ufeff" + "\r\n".join(rows)).encode()
    assert sniff_content_type(data) == CSV


def test_text_named_csv_is_csv_and_prose_with_one_comma_per_line_is_not_forced_into_csv() -> None:
    assert sniff_content_type(b"only one column\nsecond line\n", "charges.csv") == CSV
    prose = b"The meeting opened at seven, as planned.\nThe board presented the accounts; all agreed.\n"
    assert sniff_content_type(prose) == TEXT


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + bytes(200), "Windows executable"),
        (b"\x7fELF\x02\x01\x01" + bytes(200), "Linux executable"),
        (b"PK\x03\x04\x14\x00" + bytes(200), "zip archive"),
        (bytes(range(256)) * 4, "unknown type"),
        (b"hello\x00world", "unknown type"),
    ],
)
def test_an_executable_or_unknown_binary_renamed_pdf_is_refused_saying_what_it_is(
    data: bytes, detected: str
) -> None:
    with pytest.raises(UnsupportedDocumentError) as refused:
        sniff_content_type(data, "facture.pdf")
    assert refused.value.error == "unsupported_document"
    assert detected in refused.value.message
    assert "facture.pdf" in refused.value.message
    assert "application/pdf" in refused.value.message  # what is accepted


def test_minutes_saved_by_an_old_windows_editor_are_refused_with_how_to_fix_them() -> None:
    data = "Procès-verbal: la façade sera rénovée en été.\r\n".encode("cp1252")
    with pytest.raises(UnsupportedDocumentError, match="save it as UTF-8"):
        sniff_content_type(data, "pv.txt")


def test_a_wide_csv_with_quoted_decimal_commas_is_csv() -> None:
    data = b'month,chauffage,ascenseur\n2024-01,"4 120,50","260,00"\n2024-02,"3 980,10","260,00"\n'
    assert sniff_content_type(data) == CSV


def test_an_empty_document_is_refused() -> None:
    with pytest.raises(UnsupportedDocumentError, match="empty"):
        sniff_content_type(b"")


# --- what each task type needs ---------------------------------------------------------------


def test_an_unknown_task_type_is_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(InvalidTaskRequestError) as refused:
        parse_task_type("ocr")
    for allowed in ("ocr_invoice", "translate_document", "summarize_meeting", "predict_expenses"):
        assert allowed in refused.value.message
    assert parse_task_type("ocr_invoice") == "ocr_invoice"


def test_ocr_invoice_takes_a_pdf_or_an_image_and_nothing_else() -> None:
    assert check_task_input("ocr_invoice", {}, PDF) == {}
    assert check_task_input("ocr_invoice", {"lang": "fr"}, TIFF) == {"lang": "fr"}
    with pytest.raises(InvalidTaskRequestError, match="needs a document"):
        check_task_input("ocr_invoice", {}, None)
    with pytest.raises(UnsupportedDocumentError) as refused:
        check_task_input("ocr_invoice", {}, TEXT)
    assert "text/plain" in refused.value.message and "image/png" in refused.value.message


def test_summaries_and_translations_need_text_or_a_text_or_pdf_document() -> None:
    assert check_task_input("summarize_meeting", {"text": DUTCH_MINUTES}, None)["text"] == DUTCH_MINUTES
    assert check_task_input("summarize_meeting", {}, PDF) == {}
    with pytest.raises(InvalidTaskRequestError, match=r"input_data\.text"):
        check_task_input("summarize_meeting", {"text": "   "}, None)
    with pytest.raises(UnsupportedDocumentError):
        check_task_input("summarize_meeting", {}, PNG)


def test_a_translation_needs_a_target_language_among_fr_en_nl() -> None:
    assert check_task_input("translate_document", {"text": "Bonjour", "target_language": "NL"}, None) == {
        "text": "Bonjour",
        "target_language": "nl",
    }
    with pytest.raises(InvalidTaskRequestError, match="fr, en, nl") as refused:
        check_task_input("translate_document", {"text": "Bonjour", "target_language": "de"}, None)
    assert "'de'" in refused.value.message
    with pytest.raises(InvalidTaskRequestError, match="target_language"):
        check_task_input("translate_document", {}, TEXT)


def test_a_forecast_needs_a_history_list_or_a_csv_document() -> None:
    history = [{"month": "2024-01", "amount": 4200.0}]
    assert check_task_input("predict_expenses", {"history": history}, None) == {"history": history}
    assert check_task_input("predict_expenses", {}, CSV) == {}
    with pytest.raises(InvalidTaskRequestError, match="history"):
        check_task_input("predict_expenses", {"history": "4200"}, None)
    with pytest.raises(UnsupportedDocumentError, match="text/csv"):
        check_task_input("predict_expenses", {}, PDF)


# --- documents in input_data -----------------------------------------------------------------


def test_the_document_is_taken_out_of_the_parameters() -> None:
    data = {"document": "QUJD", "document_url": "s3://b/k", "target_language": "en"}
    assert parameters_of(data) == {"target_language": "en"}


def test_parameters_travel_in_the_event_so_they_are_bounded_and_storable() -> None:
    check_parameters_size({"text": DUTCH_MINUTES, "history": [{"amount": 1.5}]}, 4096)
    with pytest.raises(RequestTooLargeError, match="as a document"):
        check_parameters_size({"text": "é" * 3000}, 4096)  # 6000 bytes of UTF-8
    with pytest.raises(InvalidTaskRequestError, match="NUL"):
        check_parameters_size({"history": [{"label": "lift\x00"}]}, 4096)
    # A backslash and "u0000" typed as text is no NUL.
    check_parameters_size({"text": "\\u0000"}, 4096)


def test_base64_documents_are_decoded_with_or_without_a_data_url_prefix() -> None:
    raw = png_bytes()
    encoded = base64.b64encode(raw).decode()
    assert inline_document({"document": encoded}, 10_000) == raw
    assert inline_document({"document": "data:image/png;base64," + encoded}, 10_000) == raw
    # MIME-style line breaks.
    assert (
        inline_document(
            {"document": "\n".join(encoded[i : i + 20] for i in range(0, len(encoded), 20))}, 10_000
        )
        == raw
    )
    assert inline_document({}, 10) is None


def test_bad_base64_is_a_422_and_too_much_is_a_413_decided_before_decoding() -> None:
    with pytest.raises(InvalidTaskRequestError, match="base64"):
        inline_document({"document": "not base64 at all!"}, 1000)
    with pytest.raises(InvalidTaskRequestError, match="base64 string"):
        inline_document({"document": 42}, 1000)
    encoded = base64.b64encode(bytes(1001)).decode()
    with pytest.raises(DocumentTooLargeError) as refused:
        inline_document({"document": encoded}, 1000)
    assert refused.value.status == 413
    assert inline_document({"document": base64.b64encode(bytes(1000)).decode()}, 1000) == bytes(1000)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/f.pdf",
        "https://bucket.s3.amazonaws.com/k",
        "file:///etc/passwd",
        "ftp://x/y",
        "f.pdf",
    ],
)
def test_only_s3_urls_are_read(url: str) -> None:
    with pytest.raises(DocumentUrlError) as refused:
        parse_document_url(url)
    assert refused.value.error == "document_url_unsupported"
    assert refused.value.status == 422


def test_an_s3_url_names_a_bucket_and_a_key_and_only_allowed_buckets_are_read() -> None:
    location = parse_document_url("s3://copro-docs/2025/factures/F-0142.pdf")
    assert location == S3Location("copro-docs", "2025/factures/F-0142.pdf")
    assert location.filename == "F-0142.pdf"
    require_allowed_bucket(location, frozenset({"copro-docs"}))
    with pytest.raises(DocumentUrlError) as refused:
        require_allowed_bucket(location, frozenset({"other"}))
    assert refused.value.error == "document_url_not_allowed"
    with pytest.raises(DocumentUrlError):
        parse_document_url("s3://bucket-without-key")


def test_a_filename_is_only_a_label_without_its_folders() -> None:
    assert filename_of("C:\\Users\\x\\facture.pdf") == "facture.pdf"
    assert filename_of("../../etc/passwd") == "passwd"
    assert filename_of("") is None and filename_of(3) is None


# --- ids and filters -------------------------------------------------------------------------


def test_a_task_id_is_a_uuid_and_anything_else_is_not_found() -> None:
    assert (
        str(parse_task_id("3F2504E0-4F89-11D3-9A0C-0305E82C3301")) == "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    )
    with pytest.raises(TaskNotFoundError):
        parse_task_id("../../1")


def test_the_list_filters_are_parsed_and_bad_values_are_422() -> None:
    query = parse_task_query(
        status="pending",
        task_type="ocr_invoice",
        date_from="2025-03-01",
        date_to="2025-03-02T12:00:00Z",
        limit="10",
    )
    assert query.date_from == datetime(2025, 3, 1, tzinfo=UTC)
    assert query.date_to == datetime(2025, 3, 2, 12, tzinfo=UTC)
    assert (query.status, query.task_type, query.limit) == ("pending", "ocr_invoice", 10)
    assert parse_task_query().limit == 50
    for bad in (
        {"status": "done"},
        {"task_type": "ocr"},
        {"date_from": "yesterday"},
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "ten"},
        {"date_from": "2025-03-02", "date_to": "2025-03-01"},
    ):
        with pytest.raises(InvalidQueryError):
            parse_task_query(**bad)
