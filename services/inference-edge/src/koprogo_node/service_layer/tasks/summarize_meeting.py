"""`summarize_meeting`: minutes of a general meeting -> their decisions, and a short summary.

Faithful by construction: the decisions, votes, majorities, amounts and dates are read from the
text by rules (`domain.tasks.minutes`), never by the model. The model (the node's, a small one)
only writes the prose around them, map-reduce for minutes longer than its context: each piece
summarised, then the summaries summarised. The prose is handed out only if every figure in it
is in the minutes, in the minutes' language, without a loop (`prose_check`), and each sentence
fits the item its figures come from (`minutes_check`); else it is written once more (colder,
another seed), and then replaced by a prose built from the extract (`summary_source: extract`).
Why each refused prose was refused is in `summary_rejected`.

Parameters: `text` (or a text/plain document), optional `language` ("fr" | "nl" | "en"; by
default the minutes' own, detected). The result names the model file it was written with
(`model_sha256`, when the node knows it): the grid compares replicas' summaries only between
nodes running the same file, whose seeded sampling gives the same tokens. llama.cpp's `repeat_penalty` is not reachable through
`Sampling`: the frequency and presence penalties stand in for it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from koprogo_node.adapters.inference import EngineResult, InferenceEngine
from koprogo_node.domain.controls import Sampling
from koprogo_node.domain.tasks.language import LANGUAGE_NAMES, Language, as_language, detect_language
from koprogo_node.domain.tasks.minutes import MinutesExtract, extract_minutes
from koprogo_node.domain.tasks.minutes_check import misplaced_sentences
from koprogo_node.domain.tasks.minutes_report import minutes_result, prose_from_extract
from koprogo_node.domain.tasks.prose_check import prose_problems
from koprogo_node.service_layer.tasks.executor import TaskExecutor, TaskInputError, TaskOutput, TaskRun
from koprogo_node.service_layer.tasks.model_pieces import (
    FittedPiece,
    ModelUsage,
    PromptFor,
    answer,
    fitted_pieces,
)
from koprogo_node.service_layer.tasks.text_input import read_task_text
from koprogo_shared.document_chunks import chunk_budget_chars, merge_rounds, split_document
from koprogo_shared.events import ChatMessage

# Instructions and chat template around a piece, and the answers' budgets, in tokens.
INSTRUCTION_TOKENS = 160
SUMMARY_TOKENS = 200
PARTIAL_SUMMARY_TOKENS = 120
MAX_MERGE_ROUNDS = 3
SEED = 20250318
# Penalties stand in for llama.cpp's repeat_penalty, which Sampling does not expose.
FIRST_TRY = Sampling(temperature=0.3, seed=SEED, frequency_penalty=0.5, presence_penalty=0.3)
SECOND_TRY = Sampling(temperature=0.1, seed=SEED + 1, frequency_penalty=0.7, presence_penalty=0.4)

_SUMMARY = (
    "You summarise the minutes of a general meeting of co-owners. Write {sentences} short sentences "
    "in {language}: what the meeting discussed and what it decided. Copy every amount and date "
    "exactly as written in the minutes. Do not invent anything. Write in {language} only."
)
_MERGE = (
    "Here are summaries of successive parts of the same minutes of a general meeting of co-owners. "
    "Merge them into one summary of 3 to 5 short sentences in {language}, without repeating "
    "yourself. Copy every amount and date exactly as written. Write in {language} only."
)
_LAST_SENTENCE_END = re.compile(r"^(.*[.!?])[^.!?]*$", re.DOTALL)


class SummarizeMeetingExecutor(TaskExecutor):
    """Runs `summarize_meeting` with the node's model."""

    task_type = "summarize_meeting"

    def __init__(self, engine: InferenceEngine, model_sha256: str | None = None) -> None:
        self._engine = engine
        self.model_sha256 = model_sha256

    async def run(self, run: TaskRun) -> TaskOutput:
        text = await read_task_text(run)
        language = _language(run.parameters, text)
        extract = await asyncio.to_thread(extract_minutes, text)
        usage = ModelUsage()
        prose, rejected = await self._model_prose(text, extract, language, run, usage)
        if prose is None:
            result = minutes_result(extract, language, prose_from_extract(extract, language), "extract")
        else:
            result = minutes_result(extract, language, prose, "model")
        result["summary_rejected"] = rejected
        result["model_calls"] = usage.calls
        if self.model_sha256 is not None:
            result["model_sha256"] = self.model_sha256
        return TaskOutput(result, usage.prompt_tokens, usage.completion_tokens)

    async def _model_prose(
        self, text: str, extract: MinutesExtract, language: Language, run: TaskRun, usage: ModelUsage
    ) -> tuple[str | None, list[str]]:
        """The model's prose if it passes the checks on either try, and why each try was refused."""
        name = LANGUAGE_NAMES[language]
        pieces = await self._pieces(text, _SUMMARY.format(sentences="3 to 5", language=name), SUMMARY_TOKENS)
        if len(pieces) > 1:
            # Map: each piece summarised once; reduce: the summaries summarised, in rounds.
            system = _SUMMARY.format(sentences="2 or 3", language=name)
            partial_pieces = await self._pieces(text, system, PARTIAL_SUMMARY_TOKENS)
            partials = [_prose(await answer(self._engine, p, FIRST_TRY, run, usage)) for p in partial_pieces]
            pieces = await self._merged(partials, _MERGE.format(language=name), run, usage)
        rejected: list[str] = []
        for attempt, sampling in enumerate((FIRST_TRY, SECOND_TRY), start=1):
            prose = "\n".join([_prose(await answer(self._engine, p, sampling, run, usage)) for p in pieces])
            problems = prose_problems(prose, text, language) + misplaced_sentences(prose, extract)
            if not problems:
                return prose, rejected
            rejected.append(f"try {attempt}: " + "; ".join(problems))
        return None, rejected

    async def _pieces(self, text: str, system: str, answer_tokens: int) -> list[FittedPiece]:
        budget = chunk_budget_chars(self._engine.context_length, INSTRUCTION_TOKENS + answer_tokens)
        return await fitted_pieces(
            self._engine, split_document(text, budget), _prompt(system), lambda _: answer_tokens
        )

    async def _merged(
        self, partials: list[str], system: str, run: TaskRun, usage: ModelUsage
    ) -> list[FittedPiece]:
        """Summaries merged in rounds until one request holds them (or the rounds run out)."""
        budget = chunk_budget_chars(self._engine.context_length, INSTRUCTION_TOKENS + SUMMARY_TOKENS)
        groups = merge_rounds(partials, budget)
        for _ in range(MAX_MERGE_ROUNDS):
            if len(groups) <= 1:
                break
            pieces = await fitted_pieces(
                self._engine, groups, _prompt(system), lambda _: PARTIAL_SUMMARY_TOKENS
            )
            merged = [_prose(await answer(self._engine, p, FIRST_TRY, run, usage)) for p in pieces]
            groups = merge_rounds(merged, budget)
        return await fitted_pieces(self._engine, groups, _prompt(system), lambda _: SUMMARY_TOKENS)


def _language(parameters: dict[str, Any], text: str) -> Language:
    asked = parameters.get("language")
    if asked is None:
        return detect_language(text)
    language = as_language(asked)
    if language is None:
        raise TaskInputError(f"language must be fr, nl or en, not {asked!r}", field="language")
    return language


def _prompt(system: str) -> PromptFor:
    def prompt_for(piece: str) -> list[ChatMessage]:
        return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=piece)]

    return prompt_for


def _prose(result: EngineResult) -> str:
    """The answer's text, cut after its last full sentence when the budget cut it mid-way."""
    text = result.content.strip()
    if result.finish_reason == "length":
        match = _LAST_SENTENCE_END.match(text)
        text = match.group(1) if match else text
    return text
