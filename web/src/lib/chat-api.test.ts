import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { app } from './app.svelte';
import { ChatStreamError, cancelChat, chatRequestBody, fetchModels, streamChat, type ChatRequestBody } from './chat-api';
import { FakeChatGateway, answerFor, jsonResponse, sse, streamResponse } from './chat-fakes';
import { ApiError, NetworkError } from './http';

const body: ChatRequestBody = chatRequestBody('auto', [{ role: 'user', content: 'Bonjour' }], 'c0ffee00-0000-4000-8000-000000000001', 'copro_default');

function stubFetch(respond: (init: RequestInit) => Response | Promise<Response>) {
  const calls: RequestInit[] = [];
  vi.stubGlobal('fetch', async (_input: RequestInfo | URL, init: RequestInit = {}) => {
    calls.push(init);
    return respond(init);
  });
  return calls;
}

describe('chatRequestBody', () => {
  it('names the copro as context and sends no routing for the copro default', () => {
    expect(body).toEqual({
      model: 'auto',
      messages: [{ role: 'user', content: 'Bonjour' }],
      context: 'copro:c0ffee00-0000-4000-8000-000000000001',
      stream: true,
    });
  });

  it('sends a chosen routing policy, and no context without a copro', () => {
    expect(chatRequestBody('auto:small', [{ role: 'user', content: 'x' }], null, 'edge_only')).toEqual({
      model: 'auto:small',
      messages: [{ role: 'user', content: 'x' }],
      routing: { policy: 'edge_only' },
      stream: true,
    });
  });
});

describe('streamChat', () => {
  beforeEach(() => {
    app.token = 'token-1';
  });
  afterEach(() => {
    vi.unstubAllGlobals();
    app.token = null;
  });

  it('POSTs the body with stream, the Idempotency-Key and the bearer token; pieces then the done response', async () => {
    const gateway = new FakeChatGateway().plan({ kind: 'answer', pieces: ['Bon', 'jour', ' !'] });
    vi.stubGlobal('fetch', gateway.fetch);
    const pieces: string[] = [];
    const answer = await streamChat(body, 'key-1', (t) => pieces.push(t), new AbortController().signal);
    expect(pieces).toEqual(['Bon', 'jour', ' !']);
    expect(answer.content).toBe('Bonjour !');
    expect(answer.execution_info.execution_type).toBe('edge');
    expect(gateway.calls).toEqual([{ key: 'key-1', body, authorization: 'Bearer token-1' }]);
  });

  it('ignores a piece whose index it already got', async () => {
    const done = answerFor('ab');
    stubFetch(() =>
      streamResponse({
        chunks: [
          sse('delta', { index: 0, delta: 'a' }),
          sse('delta', { index: 0, delta: 'a' }),
          sse('delta', { index: 1, delta: 'b' }),
          sse('delta', { index: 0, delta: 'a' }),
          sse('done', done),
        ],
      }),
    );
    const pieces: string[] = [];
    await streamChat(body, 'k', (t) => pieces.push(t), new AbortController().signal);
    expect(pieces).toEqual(['a', 'b']);
  });

  it('turns `event: error` into a ChatStreamError with the gateway’s status for the code', async () => {
    stubFetch(() => streamResponse({ chunks: [sse('error', { error: 'timeout', message: 'no node answered within 60s' })] }));
    const error = await streamChat(body, 'k', () => {}, new AbortController().signal).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ChatStreamError);
    expect(error).toMatchObject({ status: 504, code: 'timeout', message: 'no node answered within 60s', replayed: false });
    // Stored under the key by the gateway: the same key would only replay it.
    expect((error as ChatStreamError).retryable).toBe(false);
    expect((error as ChatStreamError).settledUnderKey).toBe(true);
  });

  it('says a node_changed error may end otherwise under the same key', async () => {
    stubFetch(() =>
      streamResponse({
        chunks: [sse('delta', { index: 0, delta: 'x' }), sse('error', { error: 'node_changed', message: 'moved' })],
        headers: { 'Idempotent-Replayed': 'true' },
      }),
    );
    const error = (await streamChat(body, 'k', () => {}, new AbortController().signal).catch((e: unknown) => e)) as ChatStreamError;
    expect(error).toMatchObject({ status: 503, code: 'node_changed', replayed: true, retryable: true });
  });

  it('rejects with ApiError (status, code, message, Retry-After) when refused before streaming', async () => {
    stubFetch(() => jsonResponse(429, { error: 'rate_limited', message: 'slow down' }, { 'Retry-After': '7' }));
    const error = await streamChat(body, 'k', () => {}, new AbortController().signal).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error).not.toBeInstanceOf(ChatStreamError);
    expect(error).toMatchObject({ status: 429, code: 'rate_limited', message: 'slow down', retryAfterS: 7, retryable: true });
  });

  it('rejects with NetworkError when the gateway is unreachable', async () => {
    stubFetch(() => Promise.reject(new TypeError('Failed to fetch')));
    await expect(streamChat(body, 'k', () => {}, new AbortController().signal)).rejects.toBeInstanceOf(NetworkError);
  });

  it('rejects with NetworkError when the connection drops, or the stream ends, before done', async () => {
    stubFetch(() => streamResponse({ chunks: [sse('delta', { index: 0, delta: 'a' })], then: 'drop' }));
    await expect(streamChat(body, 'k', () => {}, new AbortController().signal)).rejects.toBeInstanceOf(NetworkError);
    stubFetch(() => streamResponse({ chunks: [sse('delta', { index: 0, delta: 'a' })], then: 'end' }));
    await expect(streamChat(body, 'k', () => {}, new AbortController().signal)).rejects.toBeInstanceOf(NetworkError);
  });

  it('rejects with an AbortError when aborted mid-stream, after the pieces so far', async () => {
    const controller = new AbortController();
    stubFetch((init) => streamResponse({ chunks: [sse('delta', { index: 0, delta: 'Bon' })], then: 'hang' }, init.signal));
    const pieces: string[] = [];
    const streaming = streamChat(body, 'k', (t) => {
      pieces.push(t);
      controller.abort();
    }, controller.signal);
    const error = await streaming.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DOMException);
    expect((error as DOMException).name).toBe('AbortError');
    expect(pieces).toEqual(['Bon']);
  });

  it('ends with an AbortError even when the body ignores the abort', async () => {
    const controller = new AbortController();
    stubFetch(() => streamResponse({ chunks: [sse('delta', { index: 0, delta: 'Bon' })], then: 'hang' }, null));
    const streaming = streamChat(body, 'k', () => controller.abort(), controller.signal);
    await expect(streaming).rejects.toMatchObject({ name: 'AbortError' });
  });
});

describe('cancelChat', () => {
  beforeEach(() => {
    app.token = 'token-1';
  });
  afterEach(() => {
    vi.unstubAllGlobals();
    app.token = null;
  });

  it('POSTs the key as JSON with the bearer token and returns what the gateway found', async () => {
    const urls: string[] = [];
    const calls: RequestInit[] = [];
    vi.stubGlobal('fetch', async (input: RequestInfo | URL, init: RequestInit = {}) => {
      urls.push(String(input));
      calls.push(init);
      return jsonResponse(200, { status: 'already_answered' });
    });
    await expect(cancelChat('key-1')).resolves.toBe('already_answered');
    expect(urls).toEqual(['/mcp/v1/chat/cancel']);
    expect(calls[0].method).toBe('POST');
    expect(JSON.parse(String(calls[0].body))).toEqual({ idempotency_key: 'key-1' });
    const headers = new Headers(calls[0].headers);
    expect(headers.get('Authorization')).toBe('Bearer token-1');
    expect(headers.get('Content-Type')).toBe('application/json');
  });

  it('cancels a running chat of the fake gateway, whose retry under the key then replays chat_cancelled', async () => {
    const gateway = new FakeChatGateway().plan({ kind: 'hang', pieces: ['Bon', 'jour'], after: 1 });
    vi.stubGlobal('fetch', gateway.fetch);
    const controller = new AbortController();
    const streaming = streamChat(body, 'key-2', () => controller.abort(), controller.signal);
    await expect(streaming).rejects.toMatchObject({ name: 'AbortError' });

    await expect(cancelChat('key-2')).resolves.toBe('cancelled');
    const retry = await streamChat(body, 'key-2', () => {}, new AbortController().signal).catch((e: unknown) => e);
    expect(retry).toMatchObject({ status: 409, code: 'chat_cancelled', replayed: true, retryable: false });
    expect(gateway.totalRuns).toBe(1);
  });

  it('rejects with the gateway’s 404 for a key it does not hold, and with NetworkError offline', async () => {
    stubFetch(() => jsonResponse(404, { error: 'idempotency_key_not_found', message: 'no chat' }));
    await expect(cancelChat('nope')).rejects.toMatchObject({ status: 404, code: 'idempotency_key_not_found' });
    stubFetch(() => Promise.reject(new TypeError('Failed to fetch')));
    await expect(cancelChat('k')).rejects.toBeInstanceOf(NetworkError);
  });

  it('rejects an answer without a known status', async () => {
    stubFetch(() => jsonResponse(200, { status: 'maybe' }));
    await expect(cancelChat('k')).rejects.toMatchObject({ code: 'malformed_response' });
  });
});

describe('fetchModels', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('returns the models list', async () => {
    const model = {
      id: 'auto',
      name: 'Automatic choice (auto)',
      provider: 'auto',
      context_length: 8192,
      is_available: true,
      edge_compatible: true,
      supports: [],
    };
    const calls = stubFetch(() => jsonResponse(200, { models: [model] }));
    await expect(fetchModels()).resolves.toEqual([model]);
    expect(calls[0].method ?? 'GET').toBe('GET');
  });

  it('rejects with the gateway’s error', async () => {
    stubFetch(() => jsonResponse(403, { error: 'forbidden', message: 'the token lacks mcp:read' }));
    await expect(fetchModels()).rejects.toMatchObject({ status: 403, code: 'forbidden' });
  });
});
