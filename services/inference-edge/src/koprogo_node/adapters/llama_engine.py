"""The real inference engine: llama-cpp-python, one `Llama` on one dedicated thread.

A `Llama` object is not safe to use from two threads, and generation is CPU-bound:
every call (load, tokenize, generate, close) runs on a single-thread executor, so
calls are serialised and the event loop keeps serving heartbeats and HTTP meanwhile.
The prompt is rendered with the GGUF's own chat template, and token counts come from
the model's tokenizer (llama's `usage`), never from the text length.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from llama_cpp import Llama, StoppingCriteriaList
from llama_cpp import llama_chat_format as chat_format

from koprogo_node.adapters.inference import EngineFinish, EngineResult, InferenceEngine, ModelInfo
from koprogo_node.domain.errors import ContextOverflowError, InferenceCancelledError, ModelFileError
from koprogo_node.domain.generation import requested_budget
from koprogo_shared.events import ChatMessage

log = logging.getLogger(__name__)

T = TypeVar("T")


class _CancellableFormatter:
    """The model's chat formatter plus one stopping rule: stop when the caller gave up."""

    def __init__(self, inner: chat_format.ChatFormatter, cancelled: Callable[[], bool]) -> None:
        self._inner = inner
        self._cancelled = cancelled

    def __call__(self, **kwargs: Any) -> chat_format.ChatFormatterResponse:
        response = self._inner(**kwargs)
        criteria = StoppingCriteriaList([*(response.stopping_criteria or []), self._stop_if_cancelled])
        return dataclasses.replace(response, stopping_criteria=criteria)

    def _stop_if_cancelled(self, _ids: Any, _logits: Any) -> bool:
        return self._cancelled()


class LlamaEngine(InferenceEngine):
    """A GGUF model served by llama.cpp."""

    def __init__(self, path: Path, *, n_ctx: int = 2048, threads: int | None = None) -> None:
        self._path = path
        self._n_ctx = n_ctx
        self._threads = threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._llama: Llama | None = None
        self._formatter: chat_format.ChatFormatter | None = None
        self._info = ModelInfo(name=None, trained_context_length=None)
        # Only read and written on the llama thread: the cancel flag of the generation running now.
        self._active_cancel: threading.Event | None = None
        # Likewise: set when the caller of the streamed answer running now left (answer kept).
        self._active_stop: threading.Event | None = None

    async def _on_llama_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- lifecycle -------------------------------------------------------------------

    async def load(self) -> None:
        await self._on_llama_thread(self._load)

    def _load(self) -> None:
        try:
            llama = Llama(
                model_path=str(self._path), n_ctx=self._n_ctx, n_threads=self._threads, verbose=False
            )
        except ValueError as exc:
            raise ModelFileError(f"cannot load {self._path}: {exc}") from None
        template = llama.metadata.get("tokenizer.chat_template")
        inner: chat_format.ChatFormatter
        if template:
            inner = chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=_token_text(llama, llama.token_eos()),
                bos_token=_token_text(llama, llama.token_bos()),
                stop_token_ids=[llama.token_eos()],
            )
        else:
            log.warning("%s has no chat template; using ChatML", self._path.name)
            inner = chat_format.format_chatml
        self._formatter = inner
        llama.chat_handler = chat_format.chat_formatter_to_chat_completion_handler(
            _CancellableFormatter(inner, self._is_cancelled)
        )
        arch = llama.metadata.get("general.architecture", "")
        trained = llama.metadata.get(f"{arch}.context_length")
        self._info = ModelInfo(
            name=llama.metadata.get("general.name"),
            trained_context_length=int(trained) if trained and trained.isdigit() else None,
        )
        # One token before the first user does: llama.cpp allocates its compute graph and
        # buffers on the first decode, which doubled the first answer's time.
        llama.create_chat_completion(messages=[{"role": "user", "content": "ok"}], max_tokens=1)
        self._llama = llama

    async def close(self) -> None:
        if self._llama is not None:
            await self._on_llama_thread(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    @property
    def context_length(self) -> int:
        return self._n_ctx if self._llama is None else self._llama.n_ctx()

    def model_info(self) -> ModelInfo:
        return self._info

    # -- inference -------------------------------------------------------------------

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self._on_llama_thread(self._count_prompt_tokens, _as_llama_messages(messages))

    def _count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        llama, formatter = self._require()
        # Exactly what llama-cpp's chat handler does with the rendered prompt.
        rendered = formatter(messages=cast(Any, messages))
        return len(llama.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True))

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        temperature: float,
        max_tokens: int | None,
        *,
        on_delta: Callable[[str], None] | None = None,
        caller_gone: threading.Event | None = None,
    ) -> EngineResult:
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        llama_messages = _as_llama_messages(messages)
        try:
            if on_delta is None:
                return await self._on_llama_thread(
                    self._generate,
                    llama_messages,
                    temperature,
                    max_tokens,
                    cancel,
                    caller_gone or threading.Event(),
                )

            def deliver(piece: str) -> None:  # on the llama thread: hand the piece to the loop
                loop.call_soon_threadsafe(on_delta, piece)

            return await self._on_llama_thread(
                self._generate_streaming,
                llama_messages,
                temperature,
                max_tokens,
                cancel,
                deliver,
                caller_gone or threading.Event(),
            )
        except asyncio.CancelledError:
            # The thread cannot be interrupted, but it checks this flag after every token.
            cancel.set()
            raise

    def _generate(
        self,
        messages: list[dict[str, str]],
        temperature: float,
        max_tokens: int | None,
        cancel: threading.Event,
        caller_gone: threading.Event,
    ) -> EngineResult:
        """The whole answer at once; it ends at the next token when the caller left (a shorter answer,
        finish "stop", the tokens really spent), or is abandoned on `cancel`."""
        llama, _ = self._require()
        # No separate count of the prompt first: llama-cpp-python tokenises it anyway, caps
        # the answer at the free context and refuses a prompt that does not fit (below), so
        # a pre-count would tokenise every prompt twice on the hot path.
        budget = requested_budget(max_tokens)
        self._active_cancel = cancel
        self._active_stop = caller_gone
        try:
            response = cast(
                dict[str, Any],
                llama.create_chat_completion(
                    messages=cast(Any, messages), temperature=temperature, max_tokens=budget
                ),
            )
        except ValueError as exc:
            if "context window" in str(exc):
                raise ContextOverflowError(self._count_prompt_tokens(messages), llama.n_ctx()) from None
            raise
        finally:
            self._active_cancel = None
            self._active_stop = None
        if cancel.is_set():
            raise InferenceCancelledError("generation abandoned")
        choice = response["choices"][0]
        usage = response["usage"]
        finish: EngineFinish = "length" if choice["finish_reason"] == "length" else "stop"
        return EngineResult(
            content=choice["message"].get("content") or "",
            finish_reason=finish,
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
        )

    def _generate_streaming(
        self,
        messages: list[dict[str, str]],
        temperature: float,
        max_tokens: int | None,
        cancel: threading.Event,
        deliver: Callable[[str], None],
        caller_gone: threading.Event,
    ) -> EngineResult:
        """Generate token by token, handing each piece to `deliver`; stop early when the caller left.

        llama-cpp-python's stream carries no usage: the prompt is counted with the same
        tokenizer call its handler makes, and each streamed chunk is one generated token
        (its stream yields per token), so the counts match the non-streamed path's.
        """
        llama, _ = self._require()
        prompt_tokens = self._count_prompt_tokens(messages)
        self._active_cancel = cancel
        self._active_stop = caller_gone
        pieces: list[str] = []
        completion_tokens = 0
        finish: EngineFinish = "stop"
        try:
            chunks = llama.create_chat_completion(
                messages=cast(Any, messages),
                temperature=temperature,
                max_tokens=requested_budget(max_tokens),
                stream=True,
            )
            for chunk in cast(Iterator[dict[str, Any]], chunks):
                choice = chunk["choices"][0]
                if choice.get("finish_reason") == "length":
                    finish = "length"
                piece = choice["delta"].get("content")
                if piece is None:
                    continue  # the role chunk and the closing chunk carry no token
                completion_tokens += 1
                if piece:
                    pieces.append(piece)
                    deliver(piece)
        except ValueError as exc:
            if "context window" in str(exc):
                raise ContextOverflowError(prompt_tokens, llama.n_ctx()) from None
            raise
        finally:
            self._active_cancel = None
            self._active_stop = None
        if cancel.is_set():
            raise InferenceCancelledError("generation abandoned")
        return EngineResult("".join(pieces), finish, prompt_tokens, completion_tokens)

    def _is_cancelled(self) -> bool:
        return any(flag is not None and flag.is_set() for flag in (self._active_cancel, self._active_stop))

    def _require(self) -> tuple[Llama, chat_format.ChatFormatter]:
        if self._llama is None or self._formatter is None:
            raise RuntimeError("the model is not loaded")
        return self._llama, self._formatter


def _token_text(llama: Llama, token: int) -> str:
    return "" if token < 0 else llama.detokenize([token], special=True).decode(errors="replace")


def _as_llama_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]
