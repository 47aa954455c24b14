"""The real inference engine: llama-cpp-python, one `Llama` on one dedicated thread.

A `Llama` object is not safe to use from two threads, and generation is CPU-bound:
every call (load, tokenize, generate, close) runs on a single-thread executor, so
calls are serialised and the event loop keeps serving heartbeats and HTTP meanwhile.
The prompt is rendered with the GGUF's own chat template, and token counts come from
the model's tokenizer (llama's `usage`), never from the text length.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import jinja2
import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar
from llama_cpp import llama_chat_format as chat_format
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from koprogo_node.adapters.inference import EngineFinish, EngineResult, InferenceEngine, ModelInfo
from koprogo_node.domain.controls import OutputConstraint, Sampling, tool_turns_as_user
from koprogo_node.domain.errors import ContextOverflowError, InferenceCancelledError, ModelFileError
from koprogo_node.domain.generation import DEFAULT_MIN_P, DEFAULT_TOP_K, DEFAULT_TOP_P, requested_budget
from koprogo_shared.events import ChatMessage
from koprogo_shared.generation import TokenLogprob, TopLogprob

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        # Grammars built from output constraints, by constraint (building one parses GBNF).
        self._grammars: dict[str, LlamaGrammar] = {}

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
        llama.chat_handler = chat_format.chat_formatter_to_chat_completion_handler(inner)
        arch = llama.metadata.get("general.architecture", "")
        trained = llama.metadata.get(f"{arch}.context_length")
        self._info = ModelInfo(
            name=llama.metadata.get("general.name"),
            trained_context_length=int(trained) if trained and trained.isdigit() else None,
        )
        # One token before the first user does: llama.cpp allocates its compute graph and
        # buffers on the first decode, which doubled the first answer's time.
        llama.create_chat_completion(messages=[{"role": "user", "content": "ok"}], max_tokens=1)
        _free_sampler(llama)
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
        return await self._on_llama_thread(self._count_prompt_tokens, list(messages))

    def _count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        llama, formatter = self._require()
        return len(self._prompt(llama, formatter, messages)[0])

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: Sampling,
        max_tokens: int | None,
        *,
        on_delta: Callable[[str], None] | None = None,
        caller_gone: threading.Event | None = None,
    ) -> EngineResult:
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        deliver: Callable[[str], None] | None = None
        if on_delta is not None:

            def deliver(piece: str) -> None:  # on the llama thread: hand the piece to the loop
                loop.call_soon_threadsafe(on_delta, piece)

        try:
            return await self._on_llama_thread(
                self._generate,
                list(messages),
                sampling,
                max_tokens,
                cancel,
                caller_gone or threading.Event(),
                deliver,
            )
        except asyncio.CancelledError:
            # The thread cannot be interrupted, but it checks this flag after every token.
            cancel.set()
            raise

    def _generate(
        self,
        messages: list[ChatMessage],
        sampling: Sampling,
        max_tokens: int | None,
        cancel: threading.Event,
        caller_gone: threading.Event,
        deliver: Callable[[str], None] | None,
    ) -> EngineResult:
        """Generate token by token over llama.cpp's sampler (`Llama.generate`), one path for plain
        and streamed answers.

        Not `create_chat_completion`: its stream carries no usage, its stop-string hold-back
        merges tokens so chunks cannot be counted, and its JSON mode let the bundled model out
        of the grammar (docs: ARCHITECTURE, Known traps). Here every sampled token is counted
        (the end-of-generation token excepted, as llama's usage does), the grammar constrains
        every token, stop strings are cut with the text held back until it cannot be one, and
        the answer ends at the next token when the caller left (`caller_gone`: what was
        generated is kept, finish "stop") or is abandoned on `cancel`.
        """
        llama, formatter = self._require()
        prompt_tokens, stops = self._prompt(llama, formatter, messages)
        free = llama.n_ctx() - len(prompt_tokens)
        if free < 1:
            raise ContextOverflowError(len(prompt_tokens), llama.n_ctx())
        budget = min(requested_budget(max_tokens), free)
        all_stops = tuple(dict.fromkeys((*sampling.stop, *stops)))
        # llama.cpp's sampler keeps the last seed: an unseeded answer gets a fresh one.
        llama.set_seed(random.getrandbits(32) if sampling.seed is None else sampling.seed % 2**32)
        if sampling.seed is not None or sampling.top_logprobs is not None:
            # A prompt partly in the KV cache has its last tokens evaluated apart from the rest,
            # through other kernels: the logits move (log probabilities by up to 0.09 on the
            # bundled model), enough to change a sample at temperature 0.8. A seeded answer, or
            # one whose log probabilities are asked for, evaluates its whole prompt: it repeats.
            llama.reset()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""
        sent = 0
        generated: list[int] = []
        # With logprobs: each token's, and where its text starts in `text` (to drop those a stop cuts).
        logprobs: list[tuple[int, TokenLogprob]] | None = None if sampling.top_logprobs is None else []
        finish: EngineFinish = "length"
        cut = None
        first_token_at = None
        tokens = llama.generate(
            prompt_tokens,
            temp=sampling.temperature,
            top_p=DEFAULT_TOP_P if sampling.top_p is None else sampling.top_p,
            top_k=DEFAULT_TOP_K,
            min_p=DEFAULT_MIN_P,
            presence_penalty=sampling.presence_penalty or 0.0,
            frequency_penalty=sampling.frequency_penalty or 0.0,
            grammar=self._grammar(sampling.constraint),
        )
        try:
            for token in tokens:
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                if llama_cpp.llama_vocab_is_eog(llama._model.vocab, token):
                    finish = "stop"
                    break
                if logprobs is not None:
                    logprobs.append((len(text), _token_logprob(llama, token, sampling.top_logprobs or 0)))
                text += decoder.decode(llama.detokenize([token], prev_tokens=prompt_tokens + generated))
                generated.append(token)
                cut = stop_position(text, all_stops)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    break
                if deliver is not None:
                    safe = len(text) - held_back(text, all_stops)
                    if safe > sent:
                        deliver(text[sent:safe])
                        sent = safe
                if len(generated) >= budget:
                    break
                if cancel.is_set() or caller_gone.is_set():
                    finish = "stop"
                    break
        finally:
            tokens.close()
            _free_sampler(llama)
        if cancel.is_set():
            raise InferenceCancelledError("generation abandoned")
        if cut is None:
            text += decoder.decode(b"", final=True)  # a character cut in half by the budget
        if deliver is not None and len(text) > sent:
            deliver(text[sent:])
        kept = None if logprobs is None else tuple(lp for start, lp in logprobs if start < len(text))
        return EngineResult(text, finish, len(prompt_tokens), len(generated), kept, first_token_at)

    def _prompt(
        self, llama: Llama, formatter: chat_format.ChatFormatter, messages: list[ChatMessage]
    ) -> tuple[list[int], tuple[str, ...]]:
        """The prompt's tokens as the chat template renders it, and the template's stop strings."""
        try:
            rendered = formatter(messages=cast(Any, _as_llama_messages(messages)))
        except jinja2.TemplateError:
            # A template that knows no `tool` role: the results become user turns that say so.
            rendered = formatter(messages=cast(Any, _as_llama_messages(tool_turns_as_user(messages))))
        tokens = llama.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True)
        stop = rendered.stop
        stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
        return tokens, stops

    def _grammar(self, constraint: OutputConstraint | None) -> LlamaGrammar | None:
        if constraint is None:
            return None
        key = json.dumps([constraint.schema, constraint.or_text], sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = LlamaGrammar.from_string(grammar_text(constraint), verbose=False)
            self._grammars[key] = grammar
        return grammar

    def _require(self) -> tuple[Llama, chat_format.ChatFormatter]:
        if self._llama is None or self._formatter is None:
            raise RuntimeError("the model is not loaded")
        return self._llama, self._formatter


def _token_logprob(llama: Llama, token: int, top: int) -> TokenLogprob:
    """The log probability the model gave `token`, read from the logits it was sampled from (the
    last decode's row: llama.cpp's sampler works on a copy), and the `top` likeliest tokens."""
    logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),))
    logprobs = Llama.logits_to_logprobs(logits)
    best = np.argpartition(-logprobs, top)[:top] if top else np.array([], dtype=np.intp)
    return TokenLogprob(
        **_candidate(llama, token, float(logprobs[token])),
        top_logprobs=[
            TopLogprob(**_candidate(llama, int(t), float(logprobs[t])))
            for t in sorted(best, key=lambda t: -logprobs[t])
        ],
    )


def _candidate(llama: Llama, token: int, logprob: float) -> dict[str, Any]:
    raw = llama.detokenize([token], special=True)
    return {"token": raw.decode(errors="replace"), "logprob": logprob, "bytes": list(raw)}


def _free_sampler(llama: Llama) -> None:
    """Free the native sampler chain `Llama.generate` built, now rather than at Python's next full
    collection: llama-cpp-python's `LlamaSampler` is a reference cycle (its `ExitStack` callback
    refers to it) that outlives the young generations while it samples, so each one waited for
    a rare full collection, and the edge node's RSS grew by several MiB an hour of chats
    (bench/README.md, "The edge node's growth, bisected"). `_sampler` is private to
    llama-cpp-python (pinned in scripts/install-llama.sh); `generate` builds a new one each call."""
    sampler = getattr(llama, "_sampler", None)
    llama._sampler = None
    if sampler is not None:
        sampler.close()


def _token_text(llama: Llama, token: int) -> str:
    return "" if token < 0 else llama.detokenize([token], special=True).decode(errors="replace")


def _as_llama_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def grammar_text(constraint: OutputConstraint) -> str:
    """The GBNF of a constraint: llama.cpp's JSON grammar, or its converter's for a schema; with
    `or_text`, that or free text whose first character is not `{` or a space."""
    if constraint.schema is None:
        json_rules = JSON_GBNF
    else:
        json_rules = json_schema_to_gbnf(json.dumps(constraint.schema), prop_order=["name", "arguments"])
        # llama-cpp-python's converter lets a string hold raw control characters (a newline),
        # which JSON forbids and parsers refuse; llama.cpp's own converter and JSON_GBNF exclude them.
        json_rules = re.sub(
            r'^char ::= \[\^"\\\\\] \|',
            lambda _: 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |',
            json_rules,
            count=1,
            flags=re.MULTILINE,
        )
    if not constraint.or_text:
        return json_rules
    renamed = re.sub(r"^root\s*::=", "json-answer ::=", json_rules, count=1, flags=re.MULTILINE)
    return f"root ::= json-answer | text-answer\ntext-answer ::= [^{{ \\t\\n] [^\\x00]*\n{renamed}"


def stop_position(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string found in `text` begins, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
