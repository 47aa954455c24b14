"""The summary and translation grid tasks with real llama.cpp and the bundled SmolLM2-135M.

The model is small: these tests do not judge its prose, they check what the executors promise
whatever the model writes: the decisions come from the text, a prose is handed out only when its
figures are the minutes' and sit with their item, long documents are cut to fit the context,
a translation keeps the layout and reports every figure it lost.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from koprogo_node.adapters.llama_engine import LlamaEngine
from koprogo_node.adapters.model_files import model_file_sha256
from koprogo_node.domain.tasks.language import Language
from koprogo_node.domain.tasks.minutes import extract_minutes
from koprogo_node.domain.tasks.minutes_check import misplaced_sentences
from koprogo_node.domain.tasks.minutes_report import prose_from_extract
from koprogo_node.domain.tasks.prose_check import figures_in, prose_problems
from koprogo_node.service_layer.tasks.executor import (
    TEXT,
    TaskCancelledError,
    TaskDocument,
    TaskInputError,
    TaskRun,
)
from koprogo_node.service_layer.tasks.summarize_meeting import SummarizeMeetingExecutor
from koprogo_node.service_layer.tasks.translate_document import TranslateDocumentExecutor
from koprogo_shared.events import ChatMessage
from tests.unit.minutes_samples import DE_LINDEN_NL, TILLEULS

pytestmark = pytest.mark.integration

NOTICE_EN = """NOTICE TO CO-OWNERS

The lift in block B will be out of service from 3 March 2025 to 7 March 2025.

The repair costs €4,250.00 excl. VAT and is paid from the reserve fund.
Please contact the managing agent on 02 555 01 23 for any question.
"""


@asynccontextmanager
async def llama(path: Path, n_ctx: int) -> AsyncIterator[LlamaEngine]:
    engine = LlamaEngine(path, n_ctx=n_ctx)
    await engine.load()
    try:
        yield engine
    finally:
        await engine.close()


def _assert_summary_is_checked(result: dict[str, Any], text: str, language: Language) -> None:
    """Whatever the model wrote: a model prose passed every check, else the extract's prose is given."""
    extract = extract_minutes(text)
    if result["summary_source"] == "model":
        assert len(result["summary_rejected"]) <= 1
        assert prose_problems(result["summary"], text, language) == []
        assert misplaced_sentences(result["summary"], extract) == []
    else:
        assert result["summary_source"] == "extract" and len(result["summary_rejected"]) == 2
        assert result["summary"] == prose_from_extract(extract, language)


@pytest.mark.timeout(900)
async def test_the_tilleuls_minutes_are_summarised_with_their_decisions_read_from_the_text(
    bundled_model_path: Path,
) -> None:
    text = TILLEULS.read_text(encoding="utf-8")
    document = TaskDocument(text.encode(), TEXT, "pv-ag-2025-les-tilleuls.txt")
    async with llama(bundled_model_path, 2048) as engine:
        output = await SummarizeMeetingExecutor(engine).run(TaskRun(parameters={}, document=document))
    result = output.result
    assert result["language"] == "fr" and result["meeting_date"] == "2025-03-18"
    decisions = " ".join(d["decision"] for d in result["decisions"])
    for words in ("comptes sont approuvés", "Décharge est donnée", "Chauffage Dubois SPRL pour 18 450 € HTVA",
                  "appel de fonds extraordinaire de 10 324,50 €", "30 juin 2025", "49 500 €", "7 %",
                  "Gestimmo SRL est renouvelé"):  # fmt: skip
        assert words in decisions, words
    assert [d["majority"] for d in result["decisions"]].count("two_thirds") == 1
    assert {48310.22, 18450.0, 10324.5, 49500.0, 3465.0} <= {a["value"] for a in result["amounts"]}
    assert any("bornes de recharge" in title for title in result["no_vote"])
    _assert_summary_is_checked(result, text, "fr")
    assert result["model_calls"] >= 1 and output.prompt_tokens > 0 and output.completion_tokens > 0


@pytest.mark.timeout(900)
async def test_two_runs_of_the_same_minutes_on_the_same_model_file_give_the_same_result(
    bundled_model_path: Path,
) -> None:
    """What the grid's quorum relies on (docs/grid-trust.md): seeded decoding on the same GGUF gives
    the same tokens, so two honest nodes' results agree. Each run on its own engine, as on two nodes.
    The result holds no timing (the attempt's seconds are in the report's usage, not its result)."""
    text = TILLEULS.read_text(encoding="utf-8")
    document = TaskDocument(text.encode(), TEXT, "pv-ag-2025-les-tilleuls.txt")
    sha = await asyncio.to_thread(model_file_sha256, bundled_model_path)
    outputs = []
    for _ in range(2):
        async with llama(bundled_model_path, 2048) as engine:
            executor = SummarizeMeetingExecutor(engine, sha)
            outputs.append(await executor.run(TaskRun(parameters={}, document=document)))
    first, second = outputs
    assert first.result["model_sha256"] == sha
    assert first.result == second.result
    assert (first.prompt_tokens, first.completion_tokens) == (second.prompt_tokens, second.completion_tokens)
    assert first.result["model_calls"] >= 1


@pytest.mark.timeout(900)
async def test_dutch_minutes_longer_than_the_context_are_summarised_map_reduce(
    bundled_model_path: Path,
) -> None:
    async with llama(bundled_model_path, 1024) as engine:
        whole = await engine.count_tokens([ChatMessage(role="user", content=DE_LINDEN_NL)])
        output = await SummarizeMeetingExecutor(engine).run(TaskRun(parameters={"text": DE_LINDEN_NL}))
    result = output.result
    assert whole > 1024  # the minutes alone overflow the context
    assert result["language"] == "nl"
    # Two pieces at least, each summarised, then the summaries merged: three calls or more per try.
    assert result["model_calls"] >= 3
    assert [d["vote"] for d in result["decisions"]] == [
        "approved",
        "approved",
        "approved",
        "rejected",
        "approved",
    ]
    assert result["no_vote"] == ["Zonnepanelen op het dak"]
    _assert_summary_is_checked(result, DE_LINDEN_NL, "nl")


@pytest.mark.timeout(900)
async def test_a_translation_keeps_the_layout_and_reports_every_figure_it_lost(
    bundled_model_path: Path,
) -> None:
    async with llama(bundled_model_path, 2048) as engine:
        output = await TranslateDocumentExecutor(engine).run(
            TaskRun(parameters={"text": NOTICE_EN, "target_language": "fr"})
        )
    result = output.result
    assert (result["source_language"], result["target_language"]) == ("en", "fr")
    assert result["paragraphs"] == 4 and result["model_calls"] == 4
    source_lines, lines = NOTICE_EN.split("\n"), result["text"].split("\n")
    assert len(lines) == len(source_lines)
    assert [i for i, line in enumerate(lines) if not line.strip()] == [
        i for i, line in enumerate(source_lines) if not line.strip()
    ]
    assert all(line.strip() for i, line in enumerate(lines) if source_lines[i].strip())
    # No figure lost in silence: each one of the source whose value is nowhere in the output is reported.
    kept = {(f.kind == "date", f.value) for f in figures_in(result["text"])}
    for figure in figures_in(NOTICE_EN):
        if (figure.kind == "date", figure.value) not in kept:
            assert figure.text in result["numbers_missing"], figure.text
    assert output.prompt_tokens > 0 and output.completion_tokens > 0


@pytest.mark.timeout(900)
async def test_a_paragraph_longer_than_the_context_is_translated_in_pieces(bundled_model_path: Path) -> None:
    paragraph = " ".join(
        f"Point {n}: the meeting approved the works on staircase {n} for €{n},{n}00.00 excl. VAT."
        for n in range(1, 13)
    )
    async with llama(bundled_model_path, 256) as engine:
        assert await engine.count_tokens([ChatMessage(role="user", content=paragraph)]) > 256
        output = await TranslateDocumentExecutor(engine).run(
            TaskRun(parameters={"text": paragraph, "target_language": "nl", "source_language": "en"})
        )
    result = output.result
    assert result["paragraphs"] == 1 and result["model_calls"] >= 3
    assert "\n" not in result["text"].strip()


async def test_translation_refuses_a_bad_language_and_stops_when_cancelled(bundled_model_path: Path) -> None:
    async with llama(bundled_model_path, 512) as engine:
        executor = TranslateDocumentExecutor(engine)
        with pytest.raises(TaskInputError) as missing:
            await executor.run(TaskRun(parameters={"text": NOTICE_EN}))
        assert missing.value.field == "target_language"
        with pytest.raises(TaskInputError):
            await executor.run(TaskRun(parameters={"text": NOTICE_EN, "target_language": "de"}))
        cancelled = threading.Event()
        cancelled.set()
        with pytest.raises(TaskCancelledError):
            await executor.run(
                TaskRun(parameters={"text": NOTICE_EN, "target_language": "nl"}, cancelled=cancelled)
            )
        same = await executor.run(TaskRun(parameters={"text": NOTICE_EN, "target_language": "en"}))
    assert same.result["text"] == NOTICE_EN and same.result["model_calls"] == 0
