"""A model loaded when a request needs it and unloaded after an idle keep-alive.

A 7-8B model holds 5-6 GB of a Pi's 8 GB: unloading it when nobody asks gives the memory
back (to the OS, the grid, another model). Each load builds a fresh engine from `factory`,
since a closed llama.cpp engine cannot load again. The node still serves the model while
it is unloaded (`loaded` stays true); `resident` says whether it is in memory now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

from koprogo_node.adapters.inference import EngineResult, InferenceEngine, ModelInfo
from koprogo_node.domain.controls import Sampling
from koprogo_shared.events import ChatMessage

log = logging.getLogger(__name__)


class OnDemandEngine(InferenceEngine):
    def __init__(
        self,
        factory: Callable[[], InferenceEngine],
        keep_alive_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_load: Callable[[float], None] = lambda _seconds: None,
    ) -> None:
        """`on_load` is told how many seconds each load took (the node's metrics)."""
        self._factory = factory
        self._on_load = on_load
        self._keep_alive_s = keep_alive_s
        self._clock = clock
        self._inner: InferenceEngine | None = None
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._in_use = 0
        self._last_used = clock()
        self._info = ModelInfo(name=None, trained_context_length=None)
        self._context_length: int | None = None
        self._servable = False
        self._reaper: asyncio.Task[None] | None = None

    @property
    def resident(self) -> bool:
        return self._inner is not None

    @property
    def loaded(self) -> bool:
        """Servable: loaded once (the file is good), resident or not."""
        return self._servable

    @property
    def context_length(self) -> int:
        if self._inner is not None:
            return self._inner.context_length
        if self._context_length is None:
            raise RuntimeError("load() must be called before context_length")
        return self._context_length

    def model_info(self) -> ModelInfo:
        return self._info

    async def load(self) -> None:
        """Load now (start-up checks the file loads); the idle keep-alive starts counting."""
        async with self._lock:
            await self._ensure_resident()
        self._last_used = self._clock()
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._unload_when_idle())

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        async with self._using() as engine:
            return await engine.count_tokens(messages)

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: Sampling,
        max_tokens: int | None,
        *,
        on_delta: Callable[[str], None] | None = None,
        caller_gone: threading.Event | None = None,
    ) -> EngineResult:
        async with self._using() as engine:
            return await engine.chat(
                messages, sampling, max_tokens, on_delta=on_delta, caller_gone=caller_gone
            )

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        async with self._lock:
            await self._unload()
        self._servable = False

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[InferenceEngine]:
        """The resident engine, loaded first if needed, and kept while the caller uses it."""
        async with self._lock:
            engine = await self._ensure_resident()
            self._in_use += 1
        try:
            yield engine
        finally:
            self._in_use -= 1
            self._last_used = self._clock()

    async def _ensure_resident(self) -> InferenceEngine:
        if self._inner is None:
            started = time.perf_counter()
            engine = self._factory()
            await engine.load()
            self._inner = engine
            self._info = engine.model_info()
            self._context_length = engine.context_length
            self._servable = True
            took = time.perf_counter() - started
            self._on_load(took)
            log.info("model loaded on demand in %.2fs", took)
        return self._inner

    async def _unload(self) -> None:
        if self._inner is not None:
            inner, self._inner = self._inner, None
            await inner.close()

    async def _unload_when_idle(self) -> None:
        while True:
            idle = self._clock() - self._last_used
            await asyncio.sleep(max(self._keep_alive_s - idle, 0.05))
            async with self._lock:
                idle = self._clock() - self._last_used
                if self._inner is not None and self._in_use == 0 and idle >= self._keep_alive_s:
                    await self._unload()
                    log.info("model unloaded after %.0fs idle", idle)
