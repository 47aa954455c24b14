"""Figures in a model's prose checked against their source; figures a translation lost."""

from __future__ import annotations

import pytest

from koprogo_node.adapters.inference import FakeInferenceEngine
from koprogo_node.domain.tasks.language import Language
from koprogo_node.domain.tasks.minutes import extract_minutes
from koprogo_node.domain.tasks.minutes_check import misplaced_sentences
from koprogo_node.domain.tasks.minutes_report import prose_from_extract
from koprogo_node.domain.tasks.prose_check import (
    missing_figures,
    prose_problems,
    repeats,
    unsupported_figures,
)
from koprogo_node.domain.tasks.translation import assemble, clean_translation, layout
from koprogo_node.service_layer.tasks.executor import TaskRun
from koprogo_node.service_layer.tasks.summarize_meeting import SummarizeMeetingExecutor
from tests.unit.minutes_samples import DE_LINDEN_NL, PARK_VIEW_EN, TILLEULS

SOURCE = TILLEULS.read_text(encoding="utf-8")


def test_figures_of_the_source_pass_whatever_their_format() -> None:
    prose = (
        "Le budget 2025 est fixé à 49 500 € et la dotation à 7 %. La chaudière coûte €18,450 HTVA "
        "(5 210 voix pour) ; l'appel de fonds de 10.324,50 EUR est payable le 30/06/2025, soit trois ans."
    )
    assert unsupported_figures(prose, SOURCE) == []


def test_invented_or_changed_figures_are_caught() -> None:
    prose = (
        "Le budget est de 49 600 €, la dotation de 8 %, payable le 30 juillet 2025, adopté par 5 211 voix."
    )
    assert unsupported_figures(prose, SOURCE) == ["49 600 €", "8 %", "30 juillet 2025", "5 211"]
    # Money keeps its currency: the right number in dollars is not the minutes' amount.
    assert unsupported_figures("A budget of $49,500.", SOURCE) == ["$49,500"]


def test_small_numbers_are_not_taken_for_inventions() -> None:
    assert unsupported_figures("Le mandat court 3 ans ; point 6 sans vote.", SOURCE) == []


def test_a_translation_that_lost_figures_reports_them_once_each() -> None:
    source = "Budget : 18 450 € HTVA, 7 %, payable au 30 juin 2025 ; 450 voix contre, 450 abstentions."
    kept = "Budget: €18,450 excl. VAT, 7%, payable by June 30, 2025; 450 votes against, 450 abstentions."
    assert missing_figures(source, kept) == []
    lost = "Budget: €18,540 excl. VAT, payable by June 2025; 450 votes against and some abstentions."
    assert missing_figures(source, lost) == ["18 450 €", "7 %", "30 juin 2025", "450"]


@pytest.mark.parametrize(("text", "language"), [(SOURCE, "fr"), (DE_LINDEN_NL, "nl"), (PARK_VIEW_EN, "en")])
def test_the_prose_built_from_the_extract_passes_every_check(text: str, language: Language) -> None:
    extract = extract_minutes(text)
    prose = prose_from_extract(extract, language)
    assert prose_problems(prose, text, language) == []
    assert misplaced_sentences(prose, extract) == []


def test_prose_in_another_language_looping_or_empty_is_refused() -> None:
    english = "The general meeting approved the accounts and the budget of the building for the year."
    assert prose_problems(english, SOURCE, "fr") == ["written in English, not French"]
    loop = "L'assemblée approuve le budget. " * 4
    assert repeats(loop) and "repeats itself" in prose_problems(loop, SOURCE, "fr")
    assert prose_problems("Résumé.", SOURCE, "fr") == ["shorter than 40 characters"]


def test_a_translated_document_keeps_its_layout() -> None:
    text = "TITRE\n\n1. Premier point\nLe texte est coupé\nà la main ici.\n\n   Retrait.\n2025\n"
    lines = layout(text)
    to_translate = [line.text for line in lines if line.translate]
    assert to_translate == ["TITRE", "1. Premier point", "Le texte est coupé à la main ici.", "Retrait."]
    out = assemble(lines, ["TITLE", "1. First item", "The text is wrapped by hand here.", "Indent."])
    assert out == "TITLE\n\n1. First item\nThe text is wrapped by hand here.\n\n   Indent.\n2025\n"


def test_a_models_translation_is_cleaned_to_one_paragraph() -> None:
    assert clean_translation('Translation: "The budget is approved."\n\nNote: I kept the amounts.') == (
        "The budget is approved."
    )


async def test_a_summary_with_an_invented_amount_is_replaced_by_the_prose_of_the_extract() -> None:
    # The port's fake answers the same invented figure on both tries: the guard, not the model, is tested.
    engine = FakeInferenceEngine(
        reply="L'assemblée a approuvé le remplacement de la chaudière pour 19 450 € et le budget 2025."
    )
    await engine.load()
    output = await SummarizeMeetingExecutor(engine).run(TaskRun(parameters={"text": SOURCE}))
    result = output.result
    assert result["summary_source"] == "extract" and len(engine.calls) == 2
    assert [r.split(":")[0] for r in result["summary_rejected"]] == ["try 1", "try 2"]
    assert "19 450 €" in result["summary_rejected"][0] and "19 450" not in result["summary"]
    assert engine.samplings[1].temperature < engine.samplings[0].temperature
    assert engine.samplings[1].seed != engine.samplings[0].seed
    assert unsupported_figures(result["summary"], SOURCE) == []


def test_a_sentence_joining_one_items_amount_to_another_items_majority_is_refused() -> None:
    extract = extract_minutes(PARK_VIEW_EN)
    wrong = "The budget of €3,500.00 for the reserve fund was approved by a two-thirds majority."
    [problem] = misplaced_sentences(wrong, extract)
    assert problem.startswith("a majority the item was not voted by: «The budget of €3,500.00")
    mixed = "The roof works cost €27,600.00 and the budget €45,000.00."
    assert misplaced_sentences(mixed, extract)[0].startswith("figures of different items in one sentence")
    flipped = "Converting the flat for €1,150.00 a month was approved."
    assert misplaced_sentences(flipped, extract)[0].startswith("an outcome the item did not have")
    right = (
        "The meeting of 24 April 2025 awarded the roof works for €27,600.00 excl. VAT by a two-thirds "
        "majority. Converting the flat for €1,150.00 a month was rejected."
    )
    assert misplaced_sentences(right, extract) == []


def test_a_sentence_in_words_the_minutes_do_not_use_is_refused() -> None:
    extract = extract_minutes(PARK_VIEW_EN)
    invented = "The committee will oversee the annual budget of €45,000.00 and report every quarter."
    [problem] = misplaced_sentences(invented, extract)
    assert problem.startswith("words not in the item its figures come from: «The committee will oversee")
    assert misplaced_sentences("A new committee will oversee the gardeners.", extract)[0].startswith(
        "words not in the minutes"
    )
    said = "The ordinary budget was set at €45,000.00, including €3,500.00 for the reserve fund."
    assert misplaced_sentences(said, extract) == []
