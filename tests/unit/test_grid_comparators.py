"""The grid's comparators: results of real executors reduced to agreement keys, and variants a
second node could send (what must agree, what must not), and odd shapes a node could send."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koprogo_grid.domain.comparators import MAX_DEPTH, agreement_key
from koprogo_node.adapters.inference import InferenceEngine
from koprogo_node.adapters.tasks.forecaster import StatsmodelsExpenseForecaster
from koprogo_node.adapters.tasks.ocr_engine import RapidOcrEngine
from koprogo_node.domain.tasks.minutes import extract_minutes
from koprogo_node.domain.tasks.minutes_report import minutes_result, prose_from_extract
from koprogo_node.service_layer.tasks.executor import CSV, PDF, TEXT, TaskDocument, TaskRun
from koprogo_node.service_layer.tasks.ocr_invoice import OcrInvoiceExecutor
from koprogo_node.service_layer.tasks.predict_expenses import PredictExpensesExecutor
from koprogo_node.service_layer.tasks.translate_document import TranslateDocumentExecutor

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
MODEL_SHA = "a" * 64


async def predicted() -> dict[str, Any]:
    executor = PredictExpensesExecutor(StatsmodelsExpenseForecaster())
    document = TaskDocument((FIXTURES / "charges-les-tilleuls-2022-2024.csv").read_bytes(), CSV)
    output = await executor.run(TaskRun(parameters={"horizon_months": 6}, document=document))
    return output.result


async def invoice() -> dict[str, Any]:
    executor = OcrInvoiceExecutor(ocr=RapidOcrEngine(), engine=None)
    document = TaskDocument((FIXTURES / "facture-chauffage-F-2025-0142.pdf").read_bytes(), PDF)
    output = await executor.run(TaskRun(parameters={}, document=document))
    # The fixture has a text layer: no OCR ran (fast), and every field was found.
    assert output.result["text_source"] == "pdf_text" and output.result["missing"] == []
    return output.result


def minutes() -> dict[str, Any]:
    """A `summarize_meeting` result as the executor builds it when the model's prose is refused."""
    text = (FIXTURES / "pv-ag-2025-les-tilleuls.txt").read_text()
    extract = extract_minutes(text)
    result = minutes_result(extract, "fr", prose_from_extract(extract, "fr"), "extract")
    result.update(summary_rejected=["try 1: figures not in the source: 2023"], model_calls=2)
    result["model_sha256"] = MODEL_SHA
    return result


class NoModel:
    """An engine the test forbids to use: translating into the source language calls no model."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the model was used ({name})")


async def translation() -> dict[str, Any]:
    executor = TranslateDocumentExecutor(cast(InferenceEngine, NoModel()))
    document = TaskDocument((FIXTURES / "pv-ag-2025-les-tilleuls.txt").read_bytes(), TEXT)
    output = await executor.run(TaskRun(parameters={"target_language": "fr"}, document=document))
    return {**output.result, "model_sha256": MODEL_SHA}


def variant(result: dict[str, Any], change: Any) -> dict[str, Any]:
    other = copy.deepcopy(result)
    change(other)
    return other


def agree(task_type: str, one: Any, other: Any) -> bool:
    return agreement_key(task_type, one) == agreement_key(task_type, other)


# ---- predict_expenses -------------------------------------------------------------------------


async def test_the_same_forecast_run_twice_gives_equal_keys() -> None:
    first, second = await predicted(), await predicted()
    key = agreement_key("predict_expenses", first)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == agreement_key("predict_expenses", second)


async def test_a_forecast_one_cent_off_disagrees_and_descriptions_do_not_count() -> None:
    result = await predicted()
    category = sorted(result["categories"])[0]

    def cent_more(r: dict[str, Any]) -> None:
        r["categories"][category]["forecast"][2]["mean"] = round(
            r["categories"][category]["forecast"][2]["mean"] + 0.01, 2
        )

    def total_upper(r: dict[str, Any]) -> None:
        r["total"][0]["upper_95"] += 5

    assert not agree("predict_expenses", result, variant(result, cent_more))
    assert not agree("predict_expenses", result, variant(result, total_upper))
    assert not agree("predict_expenses", result, variant(result, lambda r: r["categories"].pop(category)))

    def described_otherwise(r: dict[str, Any]) -> None:
        r["method"] = "something else"
        r["categories"][category]["model"] = "ETS(A,N,N)"
        r["categories"][category]["seasonal"] = not r["categories"][category]["seasonal"]

    def last_bits(r: dict[str, Any]) -> None:
        point = r["total"][0]
        point["mean"] = math.nextafter(point["mean"], math.inf)
        point["lower_80"] = str(point["lower_80"])  # a number sent as text still reads the same

    assert agree("predict_expenses", result, variant(result, described_otherwise))
    assert agree("predict_expenses", result, variant(result, last_bits))


async def test_a_forecast_with_renamed_category_or_shifted_months_disagrees() -> None:
    result = await predicted()
    category = sorted(result["categories"])[0]

    def renamed(r: dict[str, Any]) -> None:
        r["categories"][category.upper() + "_"] = r["categories"].pop(category)

    def shifted(r: dict[str, Any]) -> None:
        r["total"][0]["month"] = "1999-01"

    assert not agree("predict_expenses", result, variant(result, renamed))
    assert not agree("predict_expenses", result, variant(result, shifted))


# ---- ocr_invoice ------------------------------------------------------------------------------


async def test_the_same_invoice_read_twice_gives_equal_keys() -> None:
    assert agree("ocr_invoice", await invoice(), await invoice())


async def test_invoice_values_are_compared_after_normalisation_and_nothing_else() -> None:
    result = await invoice()
    fields = result["fields"]
    assert fields["total_incl_vat"]["value"] == 1512.5

    def retold(r: dict[str, Any]) -> None:
        f = r["fields"]
        f["total_incl_vat"] = {"value": "1 512,50", "confidence": 0.3, "source": "model"}
        f["vat"]["value"] = "262,50 €"
        f["issue_date"]["value"] = "14/03/2025"
        f["iban"]["value"] = "be71096123456769"
        f["supplier_vat_id"]["value"] = "BE0456789123"
        f["supplier"]["value"] = "  CHAUFFAGE   Dubois\u00a0SPRL "
        f["currency"]["confidence"] = 0.1
        f["due_date"]["source"] = "ocr"
        r["checks"] = {"iban_checksum": "failed", "totals": "ok", "vat_rate": "ok"}
        r["text_source"], r["pages"] = "ocr", 2

    assert agree("ocr_invoice", result, variant(result, retold))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("total_incl_vat", 1512.51),
        ("total_excl_vat", "1.250,01"),
        ("vat_rate", 6.0),
        ("issue_date", "2025-03-15"),
        ("iban", "BE71 0961 2345 6760"),
        ("supplier_vat_id", "BE 0456.789.124"),
        ("supplier", "Chauffage Dupont SPRL"),
        ("invoice_number", "F-2025-0143"),
        ("currency", "USD"),
    ],
)
async def test_a_changed_invoice_value_disagrees(field: str, value: Any) -> None:
    result = await invoice()

    def changed(r: dict[str, Any]) -> None:
        r["fields"][field]["value"] = value

    assert not agree("ocr_invoice", result, variant(result, changed))


async def test_a_field_absent_null_or_empty_is_the_same_but_not_a_found_one() -> None:
    result = await invoice()
    absent = variant(result, lambda r: r["fields"].pop("due_date"))
    null = variant(result, lambda r: r["fields"]["due_date"].update(value=None))
    empty = variant(result, lambda r: r["fields"]["due_date"].update(value="  "))
    assert agree("ocr_invoice", absent, null) and agree("ocr_invoice", absent, empty)
    assert not agree("ocr_invoice", absent, result)


def test_amounts_in_local_formats_agree_to_the_cent() -> None:
    def key(value: Any) -> str:
        return agreement_key("ocr_invoice", {"fields": {"vat": {"value": value}}})

    assert key(1512.5) == key("1 512,50") == key("1.512,50") == key("1,512.50") == key("EUR 1512.50")
    assert key(1512.5) == key(1512.50000000001) == key("1\u202f512,50 €")
    assert key(1512) == key("1.512") == key("1 512")  # a lone separator and 3 digits groups thousands
    assert key(12.5) == key("12,5")
    assert key(0.0) == key(-0.0) == key("-0,00")
    assert key(1512.5) != key(1512.51) != key(-1512.51)
    # Text that is not an amount is kept as it was sent, so it agrees only with itself.
    assert key("environ 1512") == key("environ 1512") != key(1512)
    assert key("12.3.4") != key("12.34")
    assert key(True) != key(1)


# ---- summarize_meeting, translate_document ----------------------------------------------------


def test_minutes_agree_across_whitespace_and_diagnostics_only() -> None:
    result = minutes()
    summary = result["summary"]
    assert result["items"] and result["decisions"]

    def reflowed(r: dict[str, Any]) -> None:
        r["summary"] = "  " + summary.replace(" ", "   ").replace("\n", "  \r\n") + "\n\n"
        r["summary_rejected"] = []
        r["model_calls"] = 5

    assert agree("summarize_meeting", result, variant(result, reflowed))

    def reworded(r: dict[str, Any]) -> None:
        r["summary"] = summary.replace("approuv", "refus", 1)

    def vote_changed(r: dict[str, Any]) -> None:
        r["items"][0]["vote"] = "rejected" if r["items"][0]["vote"] != "rejected" else "approved"

    def amount_changed(r: dict[str, Any]) -> None:
        r["amounts"][0]["value"] += 1

    def other_model(r: dict[str, Any]) -> None:
        r["model_sha256"] = "b" * 64

    for change in (reworded, vote_changed, amount_changed, other_model):
        assert not agree("summarize_meeting", result, variant(result, change)), change.__name__
    assert summary.replace("approuv", "refus", 1) != summary


def test_a_missing_model_sha256_agrees_only_with_another_missing_one() -> None:
    result = minutes()
    without = variant(result, lambda r: r.pop("model_sha256"))
    null = variant(result, lambda r: r.update(model_sha256=None))
    assert agree("summarize_meeting", without, null)
    assert not agree("summarize_meeting", without, result)
    upper = variant(result, lambda r: r.update(model_sha256=MODEL_SHA.upper()))
    assert agree("summarize_meeting", upper, result)


async def test_translations_compare_text_and_figures_not_call_counts() -> None:
    result = await translation()
    assert result["model_calls"] == 0 and result["paragraphs"] > 0
    assert agree("translate_document", result, await translation())

    def calls(r: dict[str, Any]) -> None:
        r["model_calls"] = 40
        r["text"] = r["text"].replace("\n", "\r\n")

    assert agree("translate_document", result, variant(result, calls))

    def other_text(r: dict[str, Any]) -> None:
        r["text"] = r["text"].replace("a", "e", 1)

    def lost_figure(r: dict[str, Any]) -> None:
        r["numbers_missing"] = ["18 450 €"]

    def other_target(r: dict[str, Any]) -> None:
        r["target_language"] = "en"

    for change in (other_text, lost_figure, other_target):
        assert not agree("translate_document", result, variant(result, change)), change.__name__


def test_model_text_keeps_line_breaks_that_are_not_blank_runs() -> None:
    def key(text: str) -> str:
        return agreement_key("translate_document", {"text": text, "model_sha256": MODEL_SHA})

    assert key("Un.\nDeux.") == key("Un. \r\nDeux.  ") == key("Un.\rDeux.")
    assert key("Un.\n\nDeux.") == key("Un.\n\n\n\nDeux.")
    assert key("Un.\nDeux.") != key("Un. Deux.") != key("Un.\n\nDeux.")
    assert key("Un.") != key("un.")  # model text is compared as written, not case-folded


# ---- every task type, odd shapes --------------------------------------------------------------

TASK_TYPES = ("ocr_invoice", "predict_expenses", "summarize_meeting", "translate_document")


def test_an_unknown_task_type_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="transcribe_audio"):
        agreement_key("transcribe_audio", {})


def deeply_nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"value": [value]}
    return value


def cyclic() -> dict[str, Any]:
    loop: dict[str, Any] = {"value": 1}
    loop["self"] = loop
    return loop


ODD_RESULTS: list[Any] = [
    None,
    [],
    "a string",
    42,
    {},
    {"fields": "not a mapping", "categories": [1, 2], "total": {"a": 1}},
    {"fields": {"vat": [1, {"x": None}], "iban": 12, "issue_date": 20250314, 7: {"value": {}}}},
    {"categories": {"x": {"forecast": [None, 3, {"month": ["2025-01"], "mean": "n/a"}]}}, "total": "x"},
    {"summary": {"no": "text"}, "text": 12, "items": {"a": float("nan")}, "model_sha256": 5},
    {"fields": {"vat": {"value": float("inf")}, "vat_rate": {"value": 10**5000}}, "total": [{"mean": 1e300}]},
    {"text": "lone \ud800 surrogate", "summary": "\udfff", "fields": {"supplier": {"value": "\ud800"}}},
    {"fields": deeply_nested(10_000), "summary": deeply_nested(10_000), "total": [deeply_nested(5_000)]},
    {"fields": {"supplier": cyclic()}, "items": cyclic(), "categories": {"c": cyclic()}},
    {"fields": {"vat": {"value": b"bytes"}, "supplier": {"value": object()}}},
]


@pytest.mark.parametrize("task_type", TASK_TYPES)
@pytest.mark.parametrize("result", ODD_RESULTS, ids=range(len(ODD_RESULTS)))
def test_odd_results_are_reduced_without_raising(task_type: str, result: Any) -> None:
    key = agreement_key(task_type, result)
    assert len(key) == 64 and key == agreement_key(task_type, result)


def test_odd_values_agree_only_with_the_same_odd_value() -> None:
    def key(value: Any) -> str:
        return agreement_key("ocr_invoice", {"fields": {"vat": {"value": value}}})

    assert key([1, 2]) == key([1, 2]) != key([1, 3])
    assert key({"a": 1}) != key({"a": 2})
    assert agreement_key("ocr_invoice", {"fields": "x"}) != agreement_key("ocr_invoice", {"fields": "y"})
    assert agreement_key("ocr_invoice", {"fields": "x"}) != agreement_key("ocr_invoice", {"fields": {}})
    # Below the depth cut, a difference deep inside still counts.
    shallow = MAX_DEPTH // 2 - 4
    assert key(deeply_nested(shallow)) != key(deeply_nested(shallow + 1))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(
    task_type=st.sampled_from(TASK_TYPES),
    result=st.dictionaries(
        st.sampled_from(["fields", "categories", "total", "summary", "text", "items", "model_sha256", "x"]),
        json_values,
    ),
)
def test_any_json_result_has_a_stable_key(task_type: str, result: dict[str, Any]) -> None:
    key = agreement_key(task_type, result)
    # The same result after a JSON round trip (as it travels on the bus) keeps its key.
    assert key == agreement_key(task_type, json.loads(json.dumps(result)))
