"""Pieces of a document sized for the node's model by its own tokenizer, and the tokens they used.

The shared splitter (`koprogo_shared.document_chunks`) sizes pieces in characters, an estimate;
here each piece's prompt is counted with the model's tokenizer and a piece that would not leave
room for its answer is cut again, on sentences, until it does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from koprogo_node.adapters.inference import EngineResult, InferenceEngine
from koprogo_node.domain.controls import Sampling
from koprogo_node.service_layer.tasks.executor import TaskCancelledError, TaskRun
from koprogo_shared.document_chunks import MIN_CHUNK_CHARS, fit_paragraph
from koprogo_shared.events import ChatMessage

PromptFor = Callable[[str], list[ChatMessage]]


@dataclass(frozen=True, slots=True)
class FittedPiece:
    """A piece of text, its prompt, and the answer tokens it may use."""

    text: str
    messages: list[ChatMessage]
    max_tokens: int


@dataclass
class ModelUsage:
    """Tokens and calls a task spent on the model (from the tokenizer)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    def add(self, result: EngineResult) -> None:
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self.calls += 1


async def fitted_pieces(
    engine: InferenceEngine,
    pieces: list[str],
    prompt_for: PromptFor,
    answer_tokens: Callable[[int], int],
) -> list[FittedPiece]:
    """`pieces`, each cut further where its prompt plus `answer_tokens(its own tokens)` would
    overflow the context; order kept."""
    base_tokens = await engine.count_tokens(prompt_for(""))
    fitted: list[FittedPiece] = []
    pending = list(reversed(pieces))
    while pending:
        piece = pending.pop()
        messages = prompt_for(piece)
        prompt_tokens = await engine.count_tokens(messages)
        answer = answer_tokens(max(prompt_tokens - base_tokens, 1))
        if prompt_tokens + answer <= engine.context_length or len(piece) <= MIN_CHUNK_CHARS // 4:
            fitted.append(FittedPiece(piece, messages, answer))
            continue
        smaller = fit_paragraph(piece, max(len(piece) // 2, MIN_CHUNK_CHARS // 4))
        if len(smaller) == 1:  # a piece that cannot be cut shorter: cut it hard in two
            half = len(piece) // 2
            smaller = [piece[:half], piece[half:]]
        pending.extend(reversed(smaller))
    return fitted


async def answer(
    engine: InferenceEngine, piece: FittedPiece, sampling: Sampling, run: TaskRun, usage: ModelUsage
) -> EngineResult:
    """One model call for `piece`, after checking that the task was not cancelled."""
    if run.cancelled.is_set():
        raise TaskCancelledError("the task was cancelled")
    result = await engine.chat(piece.messages, sampling, piece.max_tokens, caller_gone=run.cancelled)
    usage.add(result)
    if run.cancelled.is_set():
        raise TaskCancelledError("the task was cancelled")
    return result
