/**
 * Test doubles for the chat core's unit tests (imported by *.test.ts only): a fake gateway behind
 * a stubbed `fetch` that answers with real `Response` objects whose bodies are ReadableStreams,
 * keeping idempotency keys as the real gateway does (service_layer/chat.py): the first request
 * with a key runs once, a retry with the same key and body replays the stored outcome (one
 * `delta` with index 0, then `done`, header `Idempotent-Replayed: true`), another body is a 422
 * `idempotency_key_reused`. `POST /mcp/v1/chat/cancel` too: a key whose chat still runs (a 'hang'
 * plan) is settled with the 409 `chat_cancelled` its retries then get; one already settled answers
 * how it ended; an unknown key is a 404. And a manual clock.
 */
import type { ChatRequestBody, ChatResponse } from './chat-api';
import type { Clock } from './outbox';

const encoder = new TextEncoder();

export function sse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

export function answerFor(content: string, id = 'answer-1'): ChatResponse {
  return {
    id,
    model: 'smollm2-135m',
    content,
    finish_reason: 'stop',
    usage: { prompt_tokens: 7, completion_tokens: 5, total_tokens: 12 },
    execution_info: {
      execution_type: 'edge',
      node_id: 'pi-1',
      latency_ms: 321.5,
      co2_grams: 0,
      co2_saved_grams: 0.0036,
      routing: null,
    },
  };
}

export interface StreamScript {
  /** Text chunks sent in order (SSE text, split anywhere). */
  chunks: string[];
  /** After the chunks: end the body ('end'), break the connection ('drop'), or wait until aborted ('hang'). */
  then?: 'end' | 'drop' | 'hang';
  headers?: Record<string, string>;
}

/** A 200 `text/event-stream` Response; its body errors with AbortError when `signal` aborts, as a browser's does. */
export function streamResponse(script: StreamScript, signal?: AbortSignal | null): Response {
  const { chunks, then = 'end' } = script;
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      signal?.addEventListener('abort', () => {
        try {
          controller.error(new DOMException('The operation was aborted.', 'AbortError'));
        } catch {
          // already closed
        }
      });
      for (const chunk of chunks) {
        await Promise.resolve();
        if (signal?.aborted) return;
        controller.enqueue(encoder.encode(chunk));
      }
      if (then === 'end') controller.close();
      else if (then === 'drop') controller.error(new TypeError('network error'));
      // 'hang': nothing more until aborted
    },
  });
  return new Response(body, {
    status: 200,
    headers: { 'Content-Type': 'text/event-stream', ...(script.headers ?? {}) },
  });
}

export function jsonResponse(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
}

export interface RecordedCall {
  key: string | null;
  body: ChatRequestBody;
  authorization: string | null;
}

/** What the fake gateway does with the first request of a key. */
export type FirstRun =
  /** Stream the answer in pieces, then `done`. */
  | { kind: 'answer'; pieces: string[] }
  /** Run the chat (the answer is stored) but the connection drops after `after` pieces. */
  | { kind: 'lost'; pieces: string[]; after: number }
  /** Run it, send `after` pieces, then hold the connection open until the caller aborts. */
  | { kind: 'hang'; pieces: string[]; after: number }
  /** A stored error outcome, sent as `event: error`. */
  | { kind: 'stream_error'; error: string; message: string; stored: boolean; pieces?: string[] }
  /** Refused before anything runs (nothing stored under the key). */
  | { kind: 'refuse'; status: number; error: string; message: string; retryAfter?: number }
  /** fetch itself fails (the gateway unreachable). */
  | { kind: 'unreachable' };

export interface RecordedCancel {
  key: unknown;
  authorization: string | null;
}

export class FakeChatGateway {
  readonly calls: RecordedCall[] = [];
  /** The cancels received, in order. */
  readonly cancels: RecordedCancel[] = [];
  /** Make the cancel route unreachable (fetch fails, as offline). */
  cancelUnreachable = false;
  /** Keys whose chat is still running (a 'hang' plan not yet cancelled). */
  private readonly running = new Set<string>();
  /** Chats actually run (generations), per key. */
  readonly runs = new Map<string, number>();
  private readonly stored = new Map<string, { fingerprint: string; outcome: ChatResponse | { error: string; message: string } }>();
  private readonly plans: FirstRun[] = [];
  private answers = 0;

  /** The next requests that are not replays follow these plans, in order (default: a two-piece answer). */
  plan(...plans: FirstRun[]): this {
    this.plans.push(...plans);
    return this;
  }

  get totalRuns(): number {
    return [...this.runs.values()].reduce((a, b) => a + b, 0);
  }

  readonly fetch = async (input: RequestInfo | URL, init: RequestInit = {}): Promise<Response> => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    if (url.endsWith('/mcp/v1/chat/cancel')) return this.cancel(init);
    if (!url.endsWith('/mcp/v1/chat')) return jsonResponse(404, { error: 'not_found', message: url });
    const headers = new Headers(init.headers);
    const key = headers.get('Idempotency-Key');
    const body = JSON.parse(String(init.body)) as ChatRequestBody;
    this.calls.push({ key, body, authorization: headers.get('Authorization') });
    const fingerprint = JSON.stringify({ ...body, stream: undefined });
    const signal = init.signal ?? null;

    const previous = key ? this.stored.get(key) : undefined;
    if (previous) {
      if (previous.fingerprint !== fingerprint) {
        return jsonResponse(422, { error: 'idempotency_key_reused', message: 'another body' });
      }
      const replay = { 'Idempotent-Replayed': 'true' };
      const outcome = previous.outcome;
      if ('error' in outcome) return streamResponse({ chunks: [sse('error', outcome)], headers: replay }, signal);
      return streamResponse(
        { chunks: [sse('delta', { index: 0, delta: outcome.content }), sse('done', outcome)], headers: replay },
        signal,
      );
    }

    const plan = this.plans.shift() ?? { kind: 'answer', pieces: ['Bon', 'jour'] };
    if (plan.kind === 'unreachable') throw new TypeError('Failed to fetch');
    if (plan.kind === 'refuse') {
      const extra: Record<string, string> = plan.retryAfter !== undefined ? { 'Retry-After': String(plan.retryAfter) } : {};
      return jsonResponse(plan.status, { error: plan.error, message: plan.message }, extra);
    }
    if (key) this.runs.set(key, (this.runs.get(key) ?? 0) + 1);
    if (plan.kind === 'stream_error') {
      const outcome = { error: plan.error, message: plan.message };
      if (key && plan.stored) this.stored.set(key, { fingerprint, outcome });
      const deltas = (plan.pieces ?? []).map((delta, index) => sse('delta', { index, delta }));
      return streamResponse({ chunks: [...deltas, sse('error', outcome)] }, signal);
    }
    this.answers += 1;
    const answer = answerFor(plan.pieces.join(''), `answer-${this.answers}`);
    if (key) this.stored.set(key, { fingerprint, outcome: answer });
    const deltas = plan.pieces.map((delta, index) => sse('delta', { index, delta }));
    if (plan.kind === 'answer') return streamResponse({ chunks: [...deltas, sse('done', answer)] }, signal);
    if (plan.kind === 'hang' && key) this.running.add(key);
    return streamResponse({ chunks: deltas.slice(0, plan.after), then: plan.kind === 'lost' ? 'drop' : 'hang' }, signal);
  };

  private cancel(init: RequestInit): Response {
    if (this.cancelUnreachable) throw new TypeError('Failed to fetch');
    const headers = new Headers(init.headers);
    const { idempotency_key: key } = JSON.parse(String(init.body)) as { idempotency_key?: unknown };
    this.cancels.push({ key, authorization: headers.get('Authorization') });
    const stored = typeof key === 'string' ? this.stored.get(key) : undefined;
    if (typeof key !== 'string' || !stored) {
      return jsonResponse(404, { error: 'idempotency_key_not_found', message: 'no chat of yours with this key' });
    }
    if (this.running.delete(key)) {
      stored.outcome = { error: 'chat_cancelled', message: 'this chat was cancelled by its user' };
      return jsonResponse(200, { status: 'cancelled' });
    }
    const outcome = stored.outcome;
    if (!('error' in outcome)) return jsonResponse(200, { status: 'already_answered' });
    return jsonResponse(200, { status: outcome.error === 'chat_cancelled' ? 'cancelled' : 'already_failed' });
  }
}

/** A clock the test moves by hand; due timers fire on `advance`. */
export class ManualClock implements Clock {
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private nextId = 0;

  constructor(private time = 1_700_000_000_000) {}

  now(): number {
    return this.time;
  }

  setTimer(fn: () => void, ms: number): () => void {
    const id = this.nextId++;
    this.timers.push({ at: this.time + ms, fn, id });
    return () => {
      this.timers = this.timers.filter((t) => t.id !== id);
    };
  }

  /** The times timers are set for, soonest first. */
  get pending(): number[] {
    return this.timers.map((t) => t.at).sort((a, b) => a - b);
  }

  advance(ms: number): void {
    this.time += ms;
    const due = this.timers.filter((t) => t.at <= this.time).sort((a, b) => a.at - b.at);
    this.timers = this.timers.filter((t) => t.at > this.time);
    for (const timer of due) timer.fn();
  }
}
