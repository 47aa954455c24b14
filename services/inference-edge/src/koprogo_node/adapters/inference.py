"""The inference port: what the node needs from a model runtime, and a fake for unit tests."""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from koprogo_node.domain.controls import Sampling
from koprogo_node.domain.generation import answer_budget
from koprogo_shared.events import ChatMessage
from koprogo_shared.generation import TokenLogprob

EngineFinish = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class EngineResult:
    """One answer, with token counts from the model's own tokenizer."""

    content: str
    finish_reason: EngineFinish
    prompt_tokens: int
    completion_tokens: int
    # Per token of `content`, when the sampling asked for them.
    logprobs: tuple[TokenLogprob, ...] | None = None
    # When the first token was generated (`time.perf_counter()`), None when none was.
    first_token_at: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the loaded file says about itself (GGUF metadata)."""

    name: str | None
    trained_context_length: int | None


class InferenceEngine(ABC):
    """One loaded model. Calls are serialised by the engine; the event loop is never blocked."""

    @abstractmethod
    async def load(self) -> None:
        """Load the model; must be called (and finish) before any other call."""

    @property
    @abstractmethod
    def loaded(self) -> bool: ...

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Tokens the running context holds: templated prompt plus answer."""

    @abstractmethod
    def model_info(self) -> ModelInfo: ...

    @abstractmethod
    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens of `messages` once rendered with the model's chat template."""

    @abstractmethod
    async def chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: Sampling,
        max_tokens: int | None,
        *,
        on_delta: Callable[[str], None] | None = None,
        caller_gone: threading.Event | None = None,
    ) -> EngineResult:
        """Answer the conversation with `sampling`'s settings (its stop strings end the answer
        before them, its constraint's grammar shapes every token). Raises ContextOverflowError when the prompt does not fit,
        InferenceCancelledError when the caller was cancelled mid-generation.

        With `on_delta`, each generated piece is passed to it (on the event loop) as it comes,
        and setting `caller_gone` ends the answer at the next token: the result holds what was
        generated until then, with its real token counts.
        """

    @abstractmethod
    async def close(self) -> None: ...


@dataclass
class FakeInferenceEngine(InferenceEngine):
    """Counts one token per word and answers `reply`; records every call."""

    reply: str = "Bonjour, je suis un nœud de test."
    n_ctx: int = 2048
    delay_s: float = 0.0
    # Streaming only: the pause after each word, so a test can leave mid-answer.
    delay_per_word_s: float = 0.0
    calls: list[tuple[list[ChatMessage], float, int]] = field(default_factory=list)
    samplings: list[Sampling] = field(default_factory=list)
    _loaded: bool = False

    async def load(self) -> None:
        self._loaded = True

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def context_length(self) -> int:
        return self.n_ctx

    def model_info(self) -> ModelInfo:
        return ModelInfo(name="Fake", trained_context_length=self.n_ctx)

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content.split()) + 1 for m in messages)

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: Sampling,
        max_tokens: int | None,
        *,
        on_delta: Callable[[str], None] | None = None,
        caller_gone: threading.Event | None = None,
    ) -> EngineResult:
        prompt_tokens = await self.count_tokens(messages)
        budget = answer_budget(max_tokens, prompt_tokens, self.n_ctx)
        self.calls.append((list(messages), sampling.temperature, budget))
        self.samplings.append(sampling)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        words = self.reply.split()[:budget]
        finish: EngineFinish = "length" if len(self.reply.split()) > budget else "stop"
        first_token_at = time.perf_counter() if words else None
        if on_delta is not None or caller_gone is not None:
            for i, word in enumerate(words):
                if caller_gone is not None and caller_gone.is_set():
                    words, finish = words[:i], "stop"
                    break
                if on_delta is not None:
                    on_delta(word if i == 0 else " " + word)
                await asyncio.sleep(self.delay_per_word_s)
        return EngineResult(" ".join(words), finish, prompt_tokens, len(words), first_token_at=first_token_at)

    async def close(self) -> None:
        self._loaded = False
