"""The invoice rules, over lines laid out as a page would hold them (no PDF, no OCR here)."""

from __future__ import annotations

import json

import pytest

from koprogo_node.domain.tasks.iban import find_ibans, find_vat_ids, format_iban, iban_checksum_ok
from koprogo_node.domain.tasks.invoice_checks import invoice_result
from koprogo_node.domain.tasks.invoice_fields import FIELD_NAMES, extract_fields
from koprogo_node.domain.tasks.invoice_model import MODEL_CONFIDENCE, model_schema, read_model_answer
from koprogo_node.domain.tasks.ocr_text import repaired_ocr_text
from koprogo_node.domain.tasks.page_layout import TextLine, Word, lines_from_words

Cell = tuple[float, str]


def page(*rows: str | list[Cell] | None) -> list[TextLine]:
    """Rows 15 pt apart; a row is a line at x=50, a list of (x, text) cells, or None (a gap)."""
    lines: list[TextLine] = []
    for index, row in enumerate(rows):
        if row is None:
            continue
        cells = [(50.0, row)] if isinstance(row, str) else row
        for x, text in cells:
            top = 50.0 + 15 * index
            lines.append(TextLine(text, 0, x, top, x + 5.5 * len(text), top + 11))
    return lines


def values(lines: list[TextLine], source: str = "pdf_text") -> dict[str, object]:
    return {name: found.value for name, found in extract_fields(lines, source).items()}


FIXTURE_LIKE = page(
    "Chauffage Dubois SPRL",
    "Rue de la Station 12",
    "4000 Liège",
    "TVA BE 0456.789.123",
    None,
    "FACTURE",
    "Facture n° F-2025-0142",
    "Date : 14/03/2025",
    "Échéance : 13/04/2025",
    None,
    "Client :",
    "ACP Résidence Les Tilleuls",
    "Avenue des Tilleuls 45",
    None,
    "Entretien annuel chaudière gaz 120 kW | 1 | 650,00 € | 650,00 €",
    "Total HTVA : 1 250,00 €",
    "TVA 21 % : 262,50 €",
    "Total TVAC : 1 512,50 €",
    "À payer sur le compte BE71 0961 2345 6769 (BIC GKCCBEBB)",
)


def test_a_belgian_invoice_gives_every_field_in_its_normal_form() -> None:
    assert values(FIXTURE_LIKE) == {
        "supplier": "Chauffage Dubois SPRL",
        "supplier_vat_id": "BE 0456.789.123",
        "invoice_number": "F-2025-0142",
        "issue_date": "2025-03-14",
        "due_date": "2025-04-13",
        "total_excl_vat": 1250.0,
        "vat_rate": 21.0,
        "vat": 262.5,
        "total_incl_vat": 1512.5,
        "currency": "EUR",
        "iban": "BE71 0961 2345 6769",
    }


def test_confidence_is_the_rules_times_the_readers_score_and_source_is_kept() -> None:
    scored = [
        TextLine(ln.text, ln.page, ln.x0, ln.top, ln.x1, ln.bottom, confidence=0.5) for ln in FIXTURE_LIKE
    ]
    from_pdf = extract_fields(FIXTURE_LIKE, "pdf_text")
    from_ocr = extract_fields(scored, "ocr")
    for name, found in from_ocr.items():
        assert found.source == "ocr"
        assert 0 <= found.confidence <= 1
        assert found.confidence == pytest.approx(from_pdf[name].confidence * 0.5, abs=0.01)


def test_a_dutch_invoice_with_euro_sign_first_and_a_customer_column() -> None:
    lines = page(
        [(50, "Loodgieterij Peeters BV"), (330, "Klant:")],
        [(50, "Kerkstraat 118"), (330, "VME Residentie Zonnebloem")],
        [(50, "BTW-nr: BE 0712.345.678"), (330, "BTW BE 0898.765.432")],
        None,
        "Factuurnummer: 2025/0087",
        "Factuurdatum: 3 februari 2025",
        "Vervaldatum: 5 maart 2025",
        None,
        [(300, "Totaal excl. BTW"), (480, "€ 1.250,00")],
        [(300, "BTW 21%"), (480, "€ 262,50")],
        [(300, "Te betalen"), (480, "€ 1.512,50")],
        "Gelieve te betalen op rekening BE68 5390 0754 7034",
    )
    assert values(lines) == {
        "supplier": "Loodgieterij Peeters BV",
        "supplier_vat_id": "BE 0712.345.678",
        "invoice_number": "2025/0087",
        "issue_date": "2025-02-03",
        "due_date": "2025-03-05",
        "total_excl_vat": 1250.0,
        "vat_rate": 21.0,
        "vat": 262.5,
        "total_incl_vat": 1512.5,
        "currency": "EUR",
        "iban": "BE68 5390 0754 7034",
    }


def test_an_english_invoice_with_a_header_row_over_its_values() -> None:
    lines = page(
        "Brightline Cleaning Ltd",
        "VAT BE 0623.456.789",
        None,
        [(50, "Invoice No."), (200, "Invoice Date"), (350, "Due Date")],
        [(50, "INV-2025-117"), (200, "March 14, 2025"), (350, "April 13, 2025")],
        None,
        [(300, "Subtotal"), (480, "1,250.00")],
        [(300, "VAT 21%"), (480, "262.50")],
        [(300, "Total"), (480, "EUR 1,512.50")],
    )
    found = values(lines)
    assert found["invoice_number"] == "INV-2025-117"
    assert (found["issue_date"], found["due_date"]) == ("2025-03-14", "2025-04-13")
    assert (found["total_excl_vat"], found["vat"], found["total_incl_vat"]) == (1250.0, 262.5, 1512.5)
    assert found["currency"] == "EUR"


def test_the_supplier_is_the_issuer_even_when_the_customer_block_comes_first() -> None:
    lines = page(
        [(50, "ACP Résidence Les Lilas"), (330, "Ascenseurs Lemaire SAS")],
        [(50, "Rue Royale 210"), (330, "12 rue des Forges")],
        [(50, "BE 0898.765.432"), (330, "TVA FR 32 412345678")],
        None,
        "Facture n° FA-2025-00318",
    )
    found = values(lines)
    assert found["supplier"] == "Ascenseurs Lemaire SAS"
    assert found["supplier_vat_id"] == "FR 32 412345678"


def test_a_customers_vat_id_is_never_the_suppliers() -> None:
    lines = page("Facture n° 2025-12", None, "Client :", "VME Gebouw De Linde", "BTW BE 0898.765.432")
    found = values(lines)
    assert "supplier_vat_id" not in found
    assert "supplier" not in found


def test_a_missing_field_is_absent_and_listed_never_invented() -> None:
    lines = page("Chauffage Dubois SPRL", "Facture n° F-2025-0142", "Total TVAC : 1 512,50 €")
    result = invoice_result(extract_fields(lines, "pdf_text"), "pdf_text", 1)
    assert set(result["fields"]) == {"supplier", "invoice_number", "total_incl_vat", "currency"}
    assert result["missing"] == [n for n in FIELD_NAMES if n not in result["fields"]]
    assert result["checks"] == {"iban_checksum": "missing", "totals": "incomplete", "vat_rate": "incomplete"}
    json.dumps(result)  # the result is JSON as it stands


def test_a_bad_iban_is_reported_as_printed_and_flagged_failed() -> None:
    lines = [
        ln if "BE71" not in ln.text else TextLine("IBAN BE71 0961 2345 6768", 0, 50, ln.top, 300, ln.bottom)
        for ln in FIXTURE_LIKE
    ]
    result = invoice_result(extract_fields(lines, "pdf_text"), "pdf_text", 1)
    assert result["fields"]["iban"]["value"] == "BE71 0961 2345 6768"
    assert result["checks"]["iban_checksum"] == "failed"


def test_totals_that_do_not_add_up_are_flagged_with_the_printed_values_kept() -> None:
    lines = [
        ln if "TVAC" not in ln.text else TextLine("Total TVAC : 1 522,50 €", 0, 50, ln.top, 300, ln.bottom)
        for ln in FIXTURE_LIKE
    ]
    result = invoice_result(extract_fields(lines, "pdf_text"), "pdf_text", 1)
    assert result["fields"]["total_incl_vat"]["value"] == 1522.5
    assert result["fields"]["total_excl_vat"]["value"] == 1250.0
    assert result["checks"]["totals"] == "failed"
    assert result["checks"]["vat_rate"] == "ok"


def test_a_vat_amount_that_is_not_the_rate_of_the_total_is_flagged() -> None:
    lines = page("Total HTVA : 1 250,00 €", "TVA 6 % : 262,50 €", "Total TVAC : 1 512,50 €")
    result = invoice_result(extract_fields(lines, "pdf_text"), "pdf_text", 1)
    assert result["checks"] == {"iban_checksum": "missing", "totals": "ok", "vat_rate": "failed"}
    assert result["fields"]["vat_rate"]["value"] == 6.0


def test_ocr_text_without_spaces_still_gives_its_fields() -> None:
    lines = page(
        "TotalHTVA:1250,00",
        "TVA21%:262.50",
        "TotalTVAC:1512,50.",
        "Facturen°F-2025-0142",
        "Echeance.13/04/2025",
        "Factuurdatum.3februari2025",
        repaired_ocr_text("Gelievetebetalenoprekening1BANBE68539007547034"),
    )
    found = values(lines, "ocr")
    assert (found["total_excl_vat"], found["vat"], found["total_incl_vat"]) == (1250.0, 262.5, 1512.5)
    assert found["invoice_number"] == "F-2025-0142"
    assert (found["issue_date"], found["due_date"]) == ("2025-02-03", "2025-04-13")
    assert found["iban"] == "BE68 5390 0754 7034"
    # No currency mark was read; a Belgian account is in euros, said with a lower confidence.
    currency = extract_fields(lines, "ocr")["currency"]
    assert (currency.value, currency.confidence) == ("EUR", 0.6)


def test_ocr_repairs_touch_no_digit() -> None:
    assert repaired_ocr_text("Subtota! 1,980.00") == "Subtotal 1,980.00"
    assert repaired_ocr_text("Rue ·Royale 210") == "Rue Royale 210"
    assert repaired_ocr_text("1BAN BE71 0961 2345 6768") == "IBAN BE71 0961 2345 6768"
    assert repaired_ocr_text("Total! 1O0,00") == "Totall 1O0,00"


def test_words_are_grouped_into_rows_and_split_at_column_gaps() -> None:
    words = [
        Word("Total", 300, 100, 325, 111),
        Word("HTVA", 328, 100.8, 352, 111.8),
        Word("1 250,00 €", 480, 99.5, 530, 110.5),
        Word("Chauffage", 50, 50, 100, 61),
        Word("Dubois", 104, 50, 140, 61),
    ]
    lines = lines_from_words(words, page=0)
    assert [ln.text for ln in lines] == ["Chauffage Dubois", "Total HTVA", "1 250,00 €"]


def test_ibans_and_vat_ids_are_found_checked_and_normalised() -> None:
    text = "IBAN: BE71096123456769 BIC GKCCBEBB - FR7630006000011234567890189 - NL91 ABNA 0417 1643 00"
    assert [format_iban(iban) for _, iban in find_ibans(text)] == [
        "BE71 0961 2345 6769",
        "FR76 3000 6000 0112 3456 7890 189",
        "NL91 ABNA 0417 1643 00",
    ]
    assert iban_checksum_ok("BE71 0961 2345 6769")
    assert not iban_checksum_ok("BE71 0961 2345 6768")
    printed = "TVA BE0456789123 · BTW-nr BE 456.789.123 · ondernemingsnummer 0456.789.123 · FR32412345678 · NL123456789B01"
    assert [vat for _, vat in find_vat_ids(printed)] == [
        "BE 0456.789.123",
        "BE 0456.789.123",
        "BE 0456.789.123",
        "FR 32 412345678",
        "NL123456789B01",
    ]


DOCUMENT = "\n".join(ln.text for ln in FIXTURE_LIKE)


def test_the_model_answer_is_kept_only_where_the_document_says_it() -> None:
    missing = ["supplier", "due_date", "total_incl_vat", "iban", "invoice_number", "vat_rate"]
    answer = json.dumps(
        {
            "supplier": "Chauffage Dubois SPRL",  # in the document: kept
            "due_date": "13/04/2025",  # in the document: kept, ISO
            "total_incl_vat": "1 999,00 €",  # not an amount of the document: dropped
            "iban": "BE68 5390 0754 7034",  # a valid IBAN, but not this invoice's: dropped
            "invoice_number": "",  # the model's "not found"
            "vat_rate": "twenty-one",  # not a rate: dropped
        }
    )
    kept = read_model_answer(answer, missing, DOCUMENT)
    assert {name: found.value for name, found in kept.items()} == {
        "supplier": "Chauffage Dubois SPRL",
        "due_date": "2025-04-13",
    }
    assert all(found.source == "model" and found.confidence == MODEL_CONFIDENCE for found in kept.values())


def test_a_model_answer_naming_the_customer_or_not_json_is_dropped() -> None:
    assert read_model_answer('{"supplier": "ACP Résidence Les Tilleuls"}', ["supplier"], DOCUMENT) == {}
    assert read_model_answer("Chauffage Dubois SPRL", ["supplier"], DOCUMENT) == {}
    assert read_model_answer('{"supplier": 42}', ["supplier"], DOCUMENT) == {}


def test_the_model_schema_asks_for_exactly_the_missing_fields() -> None:
    schema = model_schema(["iban", "vat"])
    assert schema["required"] == ["iban", "vat"]
    assert set(schema["properties"]) == {"iban", "vat"}
    assert schema["additionalProperties"] is False


def test_a_date_after_an_invoice_label_is_not_an_invoice_number() -> None:
    found = values(
        page("Date de facture : 7 avril 2025", "Facture du 14 mars 2025", "Invoice date: 3 May 2025")
    )
    assert "invoice_number" not in found
    assert found["issue_date"] == "2025-04-07"


def test_an_iban_with_a_speck_read_as_a_dot_is_still_found_and_a_vat_id_is_never_an_iban() -> None:
    assert [iban for _, iban in find_ibans("rekening IBAN BE68 5390.0754 7034")] == ["BE68539007547034"]
    text = "TVA BE 0456 789 123 IBAN BE71 0961 2345 6769"
    assert [iban for _, iban in find_ibans(text)] == ["BE71096123456769"]


def test_an_invoice_number_after_a_dotted_label() -> None:
    assert values(page("Facture.n°:FA-2025-00318"))["invoice_number"] == "FA-2025-00318"


def test_ocr_misreads_give_a_missing_field_or_the_right_one_never_a_wrong_one() -> None:
    lines = page(
        "Ascenseurs Lemaire SAS",
        "Due Date: Aprl 13, 2025",  # a letter of the month lost
        [(300, "Total HT"), (480, repaired_ocr_text("3:180,00 EUR"))],  # the thousands dot read as a colon
        [(300, "Total TTC"), (480, "3;816,00 EUR")],  # not repaired here: no amount rather than 816
        "IBAN FR76 3000 6000 0112 3456 7890 1B9",  # a digit read as a letter: checksum flags it
    )
    found = extract_fields(lines, "ocr")
    assert found["due_date"].value == "2025-04-13"
    assert found["total_excl_vat"].value == 3180.0
    assert "total_incl_vat" not in found
    assert invoice_result(found, "ocr", 1)["checks"]["iban_checksum"] == "failed"


def test_a_care_of_line_with_a_legal_form_is_the_customers_side() -> None:
    lines = page(
        [(50, "Brightline Cleaning Lid"), (330, "Bill to:")],
        [(50, "Avenue Louise 331"), (330, "Parkview")],
        None,
        None,
        [(330, "c/o Gestimmo SRL")],
        [(330, "ACPResidenceLesTilleuls")],
    )
    assert values(lines)["supplier"] == "Brightline Cleaning Lid"


def test_a_labelled_enterprise_number_is_read_with_or_without_its_dots() -> None:
    for printed in ("ondernemingsnummer 0834.567.890", "ondernemingsnummer0834.567890", "KBO 0834 567 890"):
        assert [vat for _, vat in find_vat_ids(printed)] == ["BE 0834.567.890"], printed
    assert find_vat_ids("Tel. 0834 567 890") == []  # ten digits without a label are not a VAT id
