"""Use case: run one RunInference on this node and publish what came of it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

import jsonschema

from koprogo_node.adapters import metrics
from koprogo_node.adapters.inference import EngineResult, InferenceEngine
from koprogo_node.adapters.outcomes import OutcomeSink
from koprogo_node.domain.controls import (
    MAX_SAMPLES,
    Sampling,
    output_problem,
    read_answer,
    resampled,
    sampling_of,
    with_tool_prompt,
)
from koprogo_node.domain.errors import (
    InferenceError,
    InvalidCommandError,
    InvalidModelOutputError,
    InvalidSchemaError,
    ModelNotServedError,
)
from koprogo_node.domain.generation import DEFAULT_TEMPERATURE, TokenRate, deadline_passed
from koprogo_shared import chat_outcomes, co2
from koprogo_shared.events import (
    ChatCompleted,
    ChatFailed,
    ChatMessage,
    InferenceStarted,
    NodeHeartbeat,
    RunInference,
    utc_now,
)
from koprogo_shared.generation import ALL_FEATURES
from koprogo_shared.telemetry import generation_span, record_usage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EdgeNode:
    """Who this node is, what it serves and what it declares about its energy."""

    node_id: str
    model_id: str
    footprint: co2.EdgeFootprint

    @property
    def source(self) -> str:
        return f"koprogo/node/{self.node_id}"


@dataclass
class NodeLoad:
    """What the heartbeat reports: work in hand and measured speed."""

    in_flight: int = 0
    capacity: int = 1
    rate: TokenRate = field(default_factory=TokenRate)


class InferenceService:
    """Runs work items on the engine, one at a time, and publishes ChatCompleted or ChatFailed."""

    def __init__(
        self,
        node: EdgeNode,
        engine: InferenceEngine,
        sink: OutcomeSink,
        clock: Callable[[], datetime] = utc_now,
        load: NodeLoad | None = None,
    ) -> None:
        self.node = node
        # Shared with whatever else runs on the engine (the node's MCP tools), so the
        # heartbeat's measured speed counts every answer.
        self.load = load or NodeLoad()
        self._engine = engine
        self._sink = sink
        self._clock = clock
        # Children looked up once: observing them is all a generation adds.
        self._first_token_s = metrics.TIME_TO_FIRST_TOKEN.labels(node.model_id)
        self._tokens_per_s = metrics.GENERATION_TOKENS_PER_SECOND.labels(node.model_id)

    async def run(self, cmd: RunInference) -> ChatCompleted | ChatFailed:
        """Answer `cmd` unless nobody waits any more; domain errors become ChatFailed (4xx).

        Any other exception propagates: the work item is retried, and on its last
        delivery the work-item handler (`koprogo_shared.work_items`) calls `report_failure`.
        """
        _check_ids(cmd)  # an unusable id is refused before any work
        stored = await self._sink.stored_answer(cmd)
        if stored is not None:
            # Redelivered after its answer was stored (the node died, or its ack was lost, before
            # the item was acknowledged): the caller gets that answer again, nothing is generated
            # twice (issue 12, finding 4; the cloud worker does the same).
            log.info("request %s: answered before; sending the stored answer again", cmd.request_id)
            await self._sink.resend(stored, cmd.reply_subject)
            return stored
        outcome: ChatCompleted | ChatFailed
        if deadline_passed(cmd.deadline, self._clock()):
            outcome = self._failed(
                cmd, 504, "deadline_exceeded", "the request expired before a node could run it"
            )
        else:
            try:
                result, seconds = await self._generate(cmd)
            except InferenceError as exc:
                outcome = self._failed(cmd, exc.status, exc.error, str(exc))
            else:
                self.load.rate.observe(result.completion_tokens, seconds)
                outcome = self._completed(cmd, result, seconds)
        await self._sink.publish(outcome, cmd.reply_subject)
        return outcome

    async def report_failure(self, cmd: RunInference, status: int, error: str, message: str) -> ChatFailed:
        """Tell the caller (and the ledger) that this work item will not be answered."""
        failed = self._failed(cmd, status, error, message)
        await self._sink.publish(failed, cmd.reply_subject)
        return failed

    def heartbeat(self, interval_s: float) -> NodeHeartbeat:
        fp = self.node.footprint
        return NodeHeartbeat(
            source=self.node.source,
            node_id=self.node.node_id,
            models=[self.node.model_id],
            in_flight=self.load.in_flight,
            capacity=self.load.capacity,
            tokens_per_second=round(self.load.rate.value, 3),
            power_watts=fp.power_watts,
            intensity_g_per_kwh=fp.intensity_g_per_kwh,
            renewable_attested=fp.renewable_attested,
            interval_s=interval_s,
            context_length=self._engine.context_length,
            # llama.cpp's sampler and grammars honour every control (domain/controls.py), and
            # the engine reads each token's log probability from the logits it was sampled from.
            features=[*ALL_FEATURES, "logprobs"],
        )

    async def _generate(self, cmd: RunInference) -> tuple[EngineResult, float]:
        if cmd.model != self.node.model_id:
            raise ModelNotServedError(cmd.model, self.node.model_id)
        sampling = sampling_of(
            cmd.controls, DEFAULT_TEMPERATURE if cmd.temperature is None else cmd.temperature
        )
        messages = with_tool_prompt(cmd.messages, cmd.controls)
        await self._sink.started(
            InferenceStarted(
                source=self.node.source,
                copro_id=cmd.copro_id,
                request_id=cmd.request_id,
                node_id=self.node.node_id,
            ),
            cmd.reply_subject,
        )
        self.load.in_flight += 1
        started = time.perf_counter()
        with generation_span(cmd.model, self.node.node_id, chat_outcomes.node_execution_type(cmd)) as span:
            try:
                # An answer that may be a tool call is not streamed: a call travels whole.
                if cmd.stream and not (cmd.controls is not None and cmd.controls.calls_tools):
                    # Pieces already reached the caller: a schema-breaking answer is not tried again.
                    result = await self._stream(cmd, messages, sampling)
                    problem = _output_problem(result, cmd)
                else:
                    result, problem = await self._answer(cmd, messages, sampling)
            finally:
                self.load.in_flight -= 1
            record_usage(span, result.prompt_tokens, result.completion_tokens)
        finished = time.perf_counter()
        self._observe_speed(result, started, finished)
        if problem is not None:
            raise InvalidModelOutputError(problem)
        return result, finished - started

    def _observe_speed(self, result: EngineResult, started: float, finished: float) -> None:
        first = result.first_token_at
        if first is None:
            return
        self._first_token_s.observe(first - started)
        if result.completion_tokens > 1 and finished > first:
            self._tokens_per_s.observe((result.completion_tokens - 1) / (finished - first))

    async def _answer(
        self, cmd: RunInference, messages: list[ChatMessage], sampling: Sampling
    ) -> tuple[EngineResult, str | None]:
        """The whole answer; one that breaks the caller's schema is generated again (up to
        MAX_SAMPLES in all), and every token generated is counted."""
        spent = 0
        first_token_at = None
        # A caller that left (or timed out) stops this answer too, not only a streamed one.
        async with self._sink.caller_gone(cmd.request_id) as gone:
            for attempt in range(MAX_SAMPLES):
                tried = resampled(sampling, attempt) if attempt else sampling
                result = await self._engine.chat(messages, tried, cmd.max_tokens, caller_gone=gone)
                spent += result.completion_tokens
                first_token_at = first_token_at or result.first_token_at
                problem = _output_problem(result, cmd)
                if problem is None or gone.is_set():
                    break
        return replace(result, completion_tokens=spent, first_token_at=first_token_at), problem

    async def _stream(
        self, cmd: RunInference, messages: list[ChatMessage], sampling: Sampling
    ) -> EngineResult:
        """Generate while sending each piece to the caller, in order; stop early if the caller leaves.

        An answer cut short by the caller leaving is still a ChatCompleted (`finish_reason`
        "stop", the tokens really spent): the ledger counts what the node did.
        """
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        async def send_pieces() -> None:
            index = 0
            while (piece := await pieces.get()) is not None:
                delta = chat_outcomes.delta(cmd, source=self.node.source, index=index, piece=piece)
                await self._sink.delta(delta, cmd.reply_subject)
                index += 1

        async with self._sink.caller_gone(cmd.request_id) as gone:
            sender = asyncio.create_task(send_pieces())
            try:
                return await self._engine.chat(
                    messages, sampling, cmd.max_tokens, on_delta=pieces.put_nowait, caller_gone=gone
                )
            finally:
                pieces.put_nowait(None)
                # Every piece leaves before the completion does (same connection, same order).
                await asyncio.gather(sender, return_exceptions=True)

    def _completed(self, cmd: RunInference, result: EngineResult, seconds: float) -> ChatCompleted:
        content, tool_calls = read_answer(result.content, cmd.controls, cmd.request_id)
        return chat_outcomes.completed(
            cmd,
            source=self.node.source,
            content=content,
            finish_reason="tool_calls" if tool_calls else result.finish_reason,
            tool_calls=tool_calls,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            # A grid node runs grid chats with the same engine and the same CO₂ method.
            execution_type=chat_outcomes.node_execution_type(cmd),
            node_id=self.node.node_id,
            seconds=seconds,
            co2_grams=co2.edge_grams(seconds, self.node.footprint),
            logprobs=None if result.logprobs is None else list(result.logprobs),
        )

    def _failed(self, cmd: RunInference, status: int, error: str, message: str) -> ChatFailed:
        return chat_outcomes.failed(cmd, source=self.node.source, status=status, error=error, message=message)


def _output_problem(result: EngineResult, cmd: RunInference) -> str | None:
    try:
        return output_problem(result.content, cmd.controls, result.finish_reason)
    except jsonschema.SchemaError as exc:
        raise InvalidSchemaError(f"the JSON schema given is not valid: {exc.message}") from None


def _check_ids(cmd: RunInference) -> None:
    """Every outcome id derives from the work item (`chat_outcomes`: why the failure's comes
    from the work item's id, not the request's); one that cannot is poison."""
    try:
        chat_outcomes.check_ids(cmd)
    except chat_outcomes.UnusableIdsError as exc:
        raise InvalidCommandError(str(exc)) from None
