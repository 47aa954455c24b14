"""`translate_document`: a document translated between French, English and Dutch by the node's model.

Paragraph by paragraph (`domain.tasks.translation`): the layout (order, blank lines,
indentation) is kept, and a paragraph too long for the model's context (counted by its
tokenizer) is cut on sentences. The figures of each paragraph (amounts, numbers, dates,
percentages) are looked for in its translation by value; those not found are reported in
`numbers_missing`, never "fixed"; the paragraphs (numbered from 1) the model left in the source
language, in `paragraphs_in_source_language`.

Parameters: `text` (or a text/plain document), `target_language` ("fr" | "en" | "nl",
required), optional `source_language` (by default detected). When the model ran, the result
names its file (`model_sha256`, when the node knows it), for the grid's comparison of replicas.
"""

from __future__ import annotations

from typing import Any

from koprogo_node.adapters.inference import InferenceEngine
from koprogo_node.domain.controls import Sampling
from koprogo_node.domain.tasks.language import (
    LANGUAGE_NAMES,
    Language,
    as_language,
    detect_language,
    language_scores,
)
from koprogo_node.domain.tasks.prose_check import missing_figures
from koprogo_node.domain.tasks.translation import assemble, clean_translation, layout
from koprogo_node.service_layer.tasks.executor import TaskExecutor, TaskInputError, TaskOutput, TaskRun
from koprogo_node.service_layer.tasks.model_pieces import ModelUsage, answer, fitted_pieces
from koprogo_node.service_layer.tasks.text_input import read_task_text
from koprogo_shared.document_chunks import chunk_budget_chars, fit_paragraph
from koprogo_shared.events import ChatMessage

INSTRUCTION_TOKENS = 80
# A translation takes more tokens than its source (Dutch and French words split into more
# tokens than English ones): room for this many times the source, plus a margin.
ANSWER_RATIO = 1.6
ANSWER_MARGIN = 24
# Near-greedy and seeded: a translation should not vary; a light penalty against loops
# (llama.cpp's repeat_penalty is not reachable through Sampling).
# Marker words a translation needs before it is said to be still in the source language.
MIN_MARKER_WORDS = 3
SAMPLING = Sampling(temperature=0.1, seed=7, frequency_penalty=0.2)

_SYSTEM = (
    "You are a translator. Translate the user's text from {source} into {target}. "
    "Keep every number, amount, date and name exactly. Answer with the {target} translation only."
)


class TranslateDocumentExecutor(TaskExecutor):
    """Runs `translate_document` with the node's model."""

    task_type = "translate_document"

    def __init__(self, engine: InferenceEngine, model_sha256: str | None = None) -> None:
        self._engine = engine
        self.model_sha256 = model_sha256

    async def run(self, run: TaskRun) -> TaskOutput:
        text = await read_task_text(run)
        target = _required_language(run.parameters, "target_language")
        source = _optional_language(run.parameters, "source_language") or detect_language(text)
        lines = layout(text)
        paragraphs = [line.text for line in lines if line.translate]
        if source == target:
            result = _result(text, source, target, len(paragraphs), 0, [])
            return TaskOutput(result)
        usage = ModelUsage()
        system = _SYSTEM.format(source=LANGUAGE_NAMES[source], target=LANGUAGE_NAMES[target])
        translations: list[str] = []
        missing: list[str] = []
        untranslated: list[int] = []
        for number, paragraph in enumerate(paragraphs, start=1):
            translated = await self._translate(paragraph, system, run, usage)
            translations.append(translated)
            missing.extend(missing_figures(paragraph, translated))
            if _still_in(translated, source, target):
                untranslated.append(number)
        result = _result(assemble(lines, translations), source, target, len(paragraphs), usage.calls, missing)
        result["paragraphs_in_source_language"] = untranslated
        if usage.calls and self.model_sha256 is not None:
            result["model_sha256"] = self.model_sha256
        return TaskOutput(result, usage.prompt_tokens, usage.completion_tokens)

    async def _translate(self, paragraph: str, system: str, run: TaskRun, usage: ModelUsage) -> str:
        """One paragraph, in as many model calls as its length needs (pieces joined by a space)."""
        context = self._engine.context_length
        # Source and answer share the context: the source may take 1 / (1 + ratio) of what is left.
        budget = chunk_budget_chars(int((context - INSTRUCTION_TOKENS) / (1 + ANSWER_RATIO)), 0)

        def prompt_for(piece: str) -> list[ChatMessage]:
            return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=piece)]

        pieces = await fitted_pieces(
            self._engine,
            fit_paragraph(paragraph, budget),
            prompt_for,
            lambda tokens: int(tokens * ANSWER_RATIO) + ANSWER_MARGIN,
        )
        translated = [
            clean_translation((await answer(self._engine, p, SAMPLING, run, usage)).content) for p in pieces
        ]
        return " ".join(t for t in translated if t)


def _still_in(translation: str, source: Language, target: Language) -> bool:
    """True when the model answered in the source language (enough marker words to tell)."""
    scores = language_scores(translation)
    return scores[source] >= MIN_MARKER_WORDS and scores[source] > scores[target]


def _required_language(parameters: dict[str, Any], name: str) -> Language:
    language = _optional_language(parameters, name)
    if language is None:
        raise TaskInputError(f"{name} is required (fr, en or nl)", field=name)
    return language


def _optional_language(parameters: dict[str, Any], name: str) -> Language | None:
    value = parameters.get(name)
    if value is None:
        return None
    language = as_language(value)
    if language is None:
        raise TaskInputError(f"{name} must be fr, en or nl, not {value!r}", field=name)
    return language


def _result(
    text: str, source: Language, target: Language, paragraphs: int, calls: int, missing: list[str]
) -> dict[str, Any]:
    return {
        "text": text,
        "source_language": source,
        "target_language": target,
        "paragraphs": paragraphs,
        "model_calls": calls,
        "numbers_missing": missing,
    }
