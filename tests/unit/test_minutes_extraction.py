"""Decisions, votes, amounts and dates read from minutes by rules, in French, Dutch and English."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from fpdf import FPDF

from koprogo_node.domain.tasks.language import as_language, detect_language
from koprogo_node.domain.tasks.local_formats import parse_amount
from koprogo_node.domain.tasks.minutes import extract_minutes, split_items, split_sentences
from koprogo_node.domain.tasks.minutes_report import minutes_result, prose_from_extract
from koprogo_node.service_layer.tasks.executor import CSV, PDF, TaskDocument, TaskInputError, TaskRun
from koprogo_node.service_layer.tasks.text_input import read_task_text
from tests.invoice_documents import FONT_DIRS
from tests.unit.minutes_samples import DE_LINDEN_NL, EXPECTED, PARK_VIEW_EN, TILLEULS


def _result(text: str) -> dict[str, Any]:
    language = detect_language(text)
    extract = extract_minutes(text)
    return minutes_result(extract, language, prose_from_extract(extract, language), "extract")


def _decision_with(result: dict[str, Any], *words: str) -> dict[str, Any]:
    """The one decision whose title or decision text holds every word."""
    found = [
        d
        for d in result["decisions"]
        if all(w.lower() in f"{d['title']} {d['decision']}".lower() for w in words)
    ]
    assert len(found) == 1, (words, [d["title"] for d in result["decisions"]])
    return found[0]


def _values(amounts: list[dict[str, Any]]) -> set[float]:
    return {a["value"] for a in amounts}


def test_the_tilleuls_minutes_hold_the_six_expected_decisions() -> None:
    result = _result(TILLEULS.read_text(encoding="utf-8"))
    assert result["language"] == "fr" and result["meeting_date"] == "2025-03-18"

    accounts = _decision_with(result, "comptes", "2024", "approuvés")
    assert accounts["vote"] == "approved"
    assert accounts["votes"] == {"for": 6120, "against": 450, "abstain": 250}
    assert 48310.22 in _values(accounts["amounts"])

    discharge = _decision_with(result, "décharge", "syndic", "commissaire")
    assert discharge["vote"] == "approved" and discharge["votes"]["for"] == 6370

    boiler = _decision_with(result, "chaudière", "Chauffage Dubois SPRL", "18 450 € HTVA")
    assert boiler["vote"] == "approved" and boiler["majority"] == "two_thirds"
    assert boiler["votes"] == {"for": 5210, "against": 1160, "abstain": 450}
    assert {"text": "18 450 € HTVA", "value": 18450.0, "currency": "EUR"} in boiler["amounts"]
    # The other quotes were received, not chosen: they are not in the decision's text nor amounts.
    assert "ThermoServices" not in boiler["decision"]
    assert _values(boiler["amounts"]) == {18450.0, 12000.0, 10324.5}

    call = _decision_with(result, "appel de fonds extraordinaire", "10 324,50 €", "30 juin 2025")
    assert 10324.5 in _values(call["amounts"]) and "2025-06-30" in call["dates"]

    budget = _decision_with(result, "budget", "49 500 €", "7 %")
    assert budget["vote"] == "approved" and {49500.0, 3465.0} <= _values(budget["amounts"])

    mandate = _decision_with(result, "Gestimmo SRL", "renouvelé", "trois ans")
    assert mandate["vote"] == "approved" and mandate["votes"] == {
        "for": 5980,
        "against": 840,
        "abstain": None,
    }


def test_the_tilleuls_minutes_hold_every_expected_amount_and_the_item_without_a_vote() -> None:
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))["pv-ag-2025-les-tilleuls.txt"]
    result = _result(TILLEULS.read_text(encoding="utf-8"))
    values = _values(result["amounts"])
    for printed in expected["amounts"]:
        amount = parse_amount(printed)
        assert amount is not None and float(amount) in values, printed
    for subject in expected["no_vote"]:
        assert any(subject in title for title in result["no_vote"]), result["no_vote"]
    # Items that were discussed or noted are neither decisions nor "no vote" items.
    assert [i["vote"] for i in result["items"]][-1] == "unknown"
    assert all(d["vote"] in ("approved", "rejected") for d in result["decisions"])
    assert len(result["decisions"]) == 5  # the call for funds is part of the boiler's decision
    # Counts and shares are not money.
    assert 6820.0 not in values and 5210.0 not in values
    assert result["items"][-1]["decision"].endswith("mars 2026.")  # the closing lines are cut off


def test_dutch_minutes_of_another_building() -> None:
    result = _result(DE_LINDEN_NL)
    assert result["language"] == "nl" and result["meeting_date"] == "2025-06-12"
    accounts = _decision_with(result, "jaarrekening", "goedgekeurd")
    assert accounts["majority"] == "absolute"
    assert accounts["votes"] == {"for": 7450, "against": 820, "abstain": 310}
    discharge = _decision_with(result, "kwijting")
    assert (
        discharge["vote"] == "approved"
        and discharge["majority"] == "unanimity"
        and discharge["votes"] is None
    )
    facade = _decision_with(result, "Bouwwerken Janssens BV")
    assert facade["majority"] == "two_thirds" and facade["votes"] == {
        "for": 6120,
        "against": 2150,
        "abstain": 310,
    }
    assert {"text": "€ 84.300,00 excl. btw", "value": 84300.0, "currency": "EUR"} in facade["amounts"]
    assert "Gevelrenovatie Peeters" not in facade["decision"] and "2025-09-30" in facade["dates"]
    assert 91750.0 not in _values(facade["amounts"]) and 91750.0 in _values(result["amounts"])
    lift = _decision_with(result, "lift")
    assert (
        lift["vote"] == "rejected"
        and {"text": "€ 12.500,00", "value": 12500.0, "currency": "EUR"} in lift["amounts"]
    )
    assert lift["votes"] == {"for": 3200, "against": 5060, "abstain": 320}
    budget = _decision_with(result, "begroting")
    assert _values(budget["amounts"]) == {38000.0, 4000.0} and budget["dates"] == ["2025-06-30"]
    assert result["no_vote"] == ["Zonnepanelen op het dak"]
    assert [i["number"] for i in result["items"]] == ["1", "2", "3", "4", "5", "6", "7"]
    assert "gesloten" not in result["items"][-1]["decision"]


def test_english_minutes_of_another_building() -> None:
    result = _result(PARK_VIEW_EN)
    assert result["language"] == "en" and result["meeting_date"] == "2025-04-24"
    accounts = _decision_with(result, "2024 accounts")
    assert (
        accounts["votes"] == {"for": 7210, "against": 640, "abstain": 150}
        and accounts["majority"] == "absolute"
    )
    roof = _decision_with(result, "Roofing Solutions SRL")
    assert roof["majority"] == "two_thirds" and roof["dates"] == ["2025-06-30"]
    assert {"text": "€27,600.00 excl. VAT", "value": 27600.0, "currency": "EUR"} in roof["amounts"]
    flat = _decision_with(result, "caretaker")
    assert flat["vote"] == "rejected" and flat["majority"] == "four_fifths"
    budget = _decision_with(result, "budget 2025")
    assert budget["vote"] == "approved" and budget["votes"] == {"for": 7400, "against": 600, "abstain": 120}
    agent = _decision_with(result, "managing agent", "reappointed")
    assert agent["majority"] == "unanimity" and _values(agent["amounts"]) == {22.0}
    assert result["no_vote"] == ["Bicycle storage"]
    assert "2025-07-01" in result["dates"] and 52180.4 in _values(result["amounts"])


@pytest.mark.parametrize(
    ("majority", "vote"),
    [("à la majorité absolue", "approved"), ("à la majorité des deux tiers", "rejected")],
)
def test_counts_alone_decide_by_the_majority_stated_abstentions_left_out(majority: str, vote: str) -> None:
    text = (
        "PV de l'AG du 2 avril 2025\n\n"
        f"1. Peinture de la cage d'escalier\nProposition de travaux pour 9 800 € TVAC, {majority} : "
        "4 000 voix pour, 2 500 voix contre, 3 000 abstentions.\n"
    )
    [item] = extract_minutes(text).items
    assert item.vote == vote and item.votes is not None and item.votes.abstain == 3000


def test_a_numbered_list_inside_an_item_is_not_an_item() -> None:
    text = (
        "Point 1 : Toiture\nTrois offres :\n1. Toitures Leroy SRL 14 200 €\n2. Dak & Co 15 900 €\n"
        "3. Roofix 16 100 €\nL'assemblée retient l'offre de Toitures Leroy SRL, approuvée à l'unanimité.\n"
        "Point 2 : Divers\nRien à signaler.\n"
    )
    extract = extract_minutes(text)
    assert [(i.number, i.title) for i in extract.items] == [("1", "Toiture"), ("2", "Divers")]
    assert extract.items[0].vote == "approved" and extract.items[0].majority == "unanimity"
    assert [str(a.value) for a in extract.items[0].amounts] == ["14200", "15900", "16100"]


def test_a_heading_may_carry_the_items_text_on_the_same_line() -> None:
    text = "2. Budget 2026. Le budget est fixé à 52 000 € ; approuvé par 5 000 voix pour et 1 000 contre.\n"
    _, [(number, title, body)] = split_items(text)
    assert (number, title) == ("2", "Budget 2026")
    assert body.startswith("Le budget est fixé à 52 000 €")
    assert extract_minutes(text).items[0].vote == "approved"


def test_negations_win_over_the_word_they_negate() -> None:
    text = "1. Verlenging van het contract\nHet voorstel wordt niet goedgekeurd: 2.000 stemmen voor, 4.100 tegen.\n"
    assert extract_minutes(text).items[0].vote == "rejected"
    text = "1. New intercom\nThe proposal was not approved (3,000 votes for, 3,500 against).\n"
    assert extract_minutes(text).items[0].vote == "rejected"


def test_a_statement_without_a_vote_is_no_decision() -> None:
    text = "1. Divers\nLa date de la prochaine assemblée est fixée au 16 mars 2026.\n"
    [item] = extract_minutes(text).items
    assert item.vote == "unknown" and [d.isoformat() for d in item.dates] == ["2026-03-16"]


def test_minutes_without_numbered_items_have_no_item_but_keep_amounts_and_dates() -> None:
    extract = extract_minutes("Réunion du conseil de copropriété du 5 mai 2025. Devis de 1 250,00 € reçu.")
    assert extract.items == () and extract.meeting_date is not None
    assert [a.text for a in extract.amounts] == ["1 250,00 €"] and extract.amounts[0].value == Decimal(
        "1250.00"
    )


def test_sentences_keep_abbreviations_whole() -> None:
    assert split_sentences("M. Peeters demande deux bornes. Dhr. Maes antwoordt.") == [
        "M. Peeters demande deux bornes.",
        "Dhr. Maes antwoordt.",
    ]


def test_the_language_is_told_by_its_frequent_words() -> None:
    assert detect_language(TILLEULS.read_text(encoding="utf-8")) == "fr"
    assert detect_language("De vergadering keurt de begroting goed met 12 stemmen voor.") == "nl"
    assert detect_language("The meeting approved the budget with 12 votes for.") == "en"
    assert detect_language("12 345 — 2025", default="nl") == "nl"
    assert as_language(" NL ") == "nl" and as_language("de") is None and as_language(3) is None


@pytest.mark.parametrize(
    ("line", "votes"),
    [
        ("Vote : pour 5 210, contre 1 160, abstentions 450. La résolution est adoptée.", (5210, 1160, 450)),
        (
            "Stemming: voor: 4.400 – tegen: 3.600 – onthoudingen: 120. Het voorstel wordt afgekeurd "  # noqa: RUF001
            "(tweederdemeerderheid vereist).",
            (4400, 3600, 120),
        ),
        ("Votes: for 4,100; against 3,900. The resolution was passed.", (4100, 3900, None)),
    ],
)
def test_counts_written_words_first(line: str, votes: tuple[int, int | None, int | None]) -> None:
    [item] = extract_minutes(f"1. Travaux / Werken / Works\n{line}\n").items
    assert item.votes is not None
    assert (item.votes.for_, item.votes.against, item.votes.abstain) == votes
    assert item.vote == ("rejected" if "afgekeurd" in line else "approved")


def _minutes_pdf(text: str) -> bytes:
    """The minutes as an A4 PDF with a text layer, paragraphs wrapped by fpdf2 as a word processor would."""
    pdf = FPDF(format="A4", unit="mm")
    pdf.add_page()
    font = next(d / "DejaVuSans.ttf" for d in FONT_DIRS if (d / "DejaVuSans.ttf").exists())
    pdf.add_font("DejaVu", "", str(font))
    pdf.set_font("DejaVu", size=10)
    for paragraph in text.split("\n\n"):
        for line in paragraph.splitlines():
            pdf.multi_cell(0, 5, line, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
    return bytes(pdf.output())


async def test_minutes_read_from_a_pdf_text_layer_give_the_same_decisions() -> None:
    document = TaskDocument(_minutes_pdf(DE_LINDEN_NL), PDF, "notulen-de-linden.pdf")
    text = await read_task_text(TaskRun(parameters={}, document=document))
    assert "\n\n" in text  # paragraphs found from the gaps between lines
    from_pdf, from_text = _result(text), _result(DE_LINDEN_NL)
    assert [(d["number"], d["vote"], d["majority"], d["votes"]) for d in from_pdf["decisions"]] == [
        (d["number"], d["vote"], d["majority"], d["votes"]) for d in from_text["decisions"]
    ]
    assert from_pdf["amounts"] == from_text["amounts"] and from_pdf["no_vote"] == from_text["no_vote"]


async def test_a_document_the_task_cannot_read_is_refused_for_good() -> None:
    with pytest.raises(TaskInputError):
        await read_task_text(TaskRun(parameters={}, document=TaskDocument(b"%PDF-1.4 broken", PDF)))
    with pytest.raises(TaskInputError):
        await read_task_text(TaskRun(parameters={}, document=TaskDocument(b"\x89PNG\r\n", "image/png")))
    with pytest.raises(TaskInputError):
        await read_task_text(TaskRun(parameters={"text": "  "}))
    text = await read_task_text(TaskRun(parameters={}, document=TaskDocument(b"a;b\r\n1;2\r\n", CSV)))
    assert text == "a;b\n1;2\n"
