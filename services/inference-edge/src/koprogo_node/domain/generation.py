"""Pure rules of one generation: answer budget, deadline, measured speed. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from koprogo_node.domain.errors import ContextOverflowError

DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 0.7
# llama-cpp-python's chat defaults, kept when a request sets none.
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05


def answer_budget(requested: int | None, prompt_tokens: int, n_ctx: int) -> int:
    """How many tokens the answer may use: the request's max (or 256), capped by the free context.

    Raises ContextOverflowError when the prompt leaves no room for even one token.
    """
    free = n_ctx - prompt_tokens
    if free < 1:
        raise ContextOverflowError(prompt_tokens, n_ctx)
    return min(requested_budget(requested), free)


def requested_budget(requested: int | None) -> int:
    """The answer's token budget before the context cap (the engine applies that cap)."""
    return requested if requested is not None and requested > 0 else DEFAULT_MAX_TOKENS


def deadline_passed(deadline: datetime, now: datetime) -> bool:
    """True when nobody waits for the answer any more: running it would only burn energy."""
    return deadline <= now


@dataclass
class TokenRate:
    """Completion tokens per second, smoothed (EWMA) over recent answers.

    Zero until the first answer: the node has not measured anything yet.
    """

    alpha: float = 0.3
    value: float = 0.0
    samples: int = 0

    def observe(self, tokens: int, seconds: float) -> float:
        if tokens <= 0 or seconds <= 0:
            return self.value
        sample = tokens / seconds
        self.value = sample if self.samples == 0 else self.alpha * sample + (1 - self.alpha) * self.value
        self.samples += 1
        return self.value
