/**
 * The gateway's chat over HTTP: `POST /mcp/v1/chat` streamed (Server-Sent Events), its Stop
 * (`POST /mcp/v1/chat/cancel`) and `GET /mcp/v1/models`. Shapes follow services/gateway (domain/chat_request.py,
 * domain/stream_format.py, service_layer/models.py).
 *
 * Errors, as the outbox needs to tell them apart:
 *   ApiError            the gateway refused before streaming (its status; `retryable` for 429/502/503/504)
 *    └── ChatStreamError an `event: error` inside the 200 stream: the status is the gateway's for
 *                        that code (the event carries none); `retryable` only when sending again
 *                        under the SAME Idempotency-Key can give another outcome (see below)
 *   NetworkError        the connection failed or dropped before `done`: send again, same key
 *   DOMException 'AbortError'  the caller aborted (stop)
 *
 * Why a streamed error is mostly final: with an Idempotency-Key the gateway stores the outcome of
 * the key's first request, errors included (service_layer/chat.py, `_pieces`), and a retry with
 * the key replays it (a stored 504 `timeout` stays a 504 for 24 h). Only a request the gateway
 * "keeps" running after its stream ended (`node_changed`, `bus_unavailable`/`bus_full`: a keeper
 * stores the real outcome later), a completion stored but not fully streamed
 * (`stream_incomplete`) and a store that could not be read (`idempotency_unavailable`) are worth
 * sending again under the same key. A replayed stream (header `Idempotent-Replayed: true`)
 * repeats the whole stored answer as one `delta` with index 0, then `done`.
 */
import { ApiError, NetworkError, apiFetch } from './http';
import { readSse } from './sse';

export type RoutingChoice = 'copro_default' | 'edge_only' | 'prefer_edge' | 'lowest_carbon' | 'fastest';
export const ROUTING_CHOICES: readonly RoutingChoice[] = [
  'copro_default',
  'edge_only',
  'prefer_edge',
  'lowest_carbon',
  'fastest',
];

export interface ExecutionInfo {
  execution_type: 'edge' | 'cloud' | 'grid';
  node_id: string | null;
  latency_ms: number;
  co2_grams: number;
  co2_saved_grams: number;
  routing?: unknown | null;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** The `done` event's data: the non-streamed response (ChatResponseOut). */
export interface ChatResponse {
  id: string;
  model: string;
  content: string;
  finish_reason: string;
  usage: Usage;
  execution_info: ExecutionInfo;
  tool_calls?: unknown[] | null;
}

export interface ModelOption {
  id: string;
  name: string;
  provider: string;
  context_length: number;
  is_available: boolean;
  edge_compatible: boolean;
  supports: string[];
}

export interface ChatTurn {
  role: 'user' | 'assistant';
  content: string;
}

/** `POST /mcp/v1/chat`'s body as this page sends it (the gateway forbids unknown fields). */
export interface ChatRequestBody {
  model: string;
  messages: ChatTurn[];
  /** `copro:<uuid>`; absent when the page has no copro (the gateway then uses the token's only one). */
  context?: string;
  /** Absent for 'copro_default': the copro's policy applies. */
  routing?: { policy: Exclude<RoutingChoice, 'copro_default'> };
  stream: true;
}

export const CHAT_PATH = '/mcp/v1/chat';
export const CHAT_CANCEL_PATH = '/mcp/v1/chat/cancel';
export const MODELS_PATH = '/mcp/v1/models';

/** The body for a conversation; `routing` 'copro_default' sends no preference. */
export function chatRequestBody(
  model: string,
  messages: ChatTurn[],
  copro: string | null,
  routing: RoutingChoice,
): ChatRequestBody {
  const body: ChatRequestBody = { model, messages, stream: true };
  if (copro) body.context = `copro:${copro}`;
  if (routing !== 'copro_default') body.routing = { policy: routing };
  return body;
}

// Streamed errors whose retry under the same key may end otherwise (see the module docstring).
const RESUMABLE_STREAM_ERRORS = new Set(['node_changed', 'bus_unavailable', 'bus_full', 'stream_incomplete', 'idempotency_unavailable']);

// The HTTP status the gateway gives each code it may send in a stream's `event: error`
// (domain/errors.py, the router's refusals); the event itself carries none.
const STREAM_ERROR_STATUS: Record<string, number> = {
  timeout: 504,
  node_lost: 503,
  node_changed: 503,
  bus_unavailable: 503,
  bus_full: 503,
  stream_incomplete: 502,
  idempotency_unavailable: 503,
  no_target_available: 503,
  model_not_served: 503,
  model_not_found: 404,
  unsupported_parameter: 400,
  context_length_exceeded: 422,
  invalid_model_output: 502,
  validation_error: 422,
  rate_limited: 429,
  chat_cancelled: 409,
};

export class ChatStreamError extends ApiError {
  constructor(
    status: number,
    code: string,
    message: string,
    /** The stream replayed the key's stored outcome (`Idempotent-Replayed: true`). */
    readonly replayed: boolean,
  ) {
    super(status, code, message, null);
    this.name = 'ChatStreamError';
  }

  /** Sending again under the same key may give another outcome (else the gateway replays this one). */
  override get retryable(): boolean {
    return RESUMABLE_STREAM_ERRORS.has(this.code);
  }

  /** The gateway stored this error as the key's outcome: the same key can only replay it. */
  get settledUnderKey(): boolean {
    return !this.retryable;
  }
}

function abortError(): DOMException {
  return new DOMException('the chat was stopped', 'AbortError');
}

function parseJson(data: string, what: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    // A proxy that cut an event would give a half JSON: treat it as the connection dropping.
    throw new NetworkError(`malformed ${what} event from the gateway`);
  }
}

function isChatResponse(value: unknown): value is ChatResponse {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.id === 'string' &&
    typeof v.content === 'string' &&
    typeof v.model === 'string' &&
    typeof v.usage === 'object' &&
    v.usage !== null &&
    typeof v.execution_info === 'object' &&
    v.execution_info !== null
  );
}

/**
 * Streams one chat: `onDelta(text)` per new piece (a piece whose `index` was already seen in this
 * stream is ignored), resolves with the `done` response. Rejects with ApiError (refused before the
 * stream), ChatStreamError (`event: error`), NetworkError (unreachable, or the stream ended or
 * broke before `done`: send again with the same key) or an AbortError DOMException (`signal`).
 */
export async function streamChat(
  body: ChatRequestBody,
  idempotencyKey: string,
  onDelta: (text: string) => void,
  signal: AbortSignal,
): Promise<ChatResponse> {
  if (signal.aborted) throw abortError();
  let response: Response;
  try {
    response = await apiFetch(CHAT_PATH, {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'Idempotency-Key': idempotencyKey, Accept: 'text/event-stream' },
      signal,
    });
  } catch (error) {
    if (signal.aborted) throw abortError();
    throw error;
  }
  const replayed = response.headers.get('Idempotent-Replayed') === 'true';
  if (!response.body) throw new NetworkError('the gateway sent no stream');
  const seen = new Set<number>();
  try {
    for await (const { event, data } of readSse(response.body, signal)) {
      if (signal.aborted) throw abortError();
      if (event === 'delta') {
        const piece = parseJson(data, 'delta') as { index?: unknown; delta?: unknown };
        if (typeof piece.index !== 'number' || typeof piece.delta !== 'string') {
          throw new NetworkError('malformed delta event from the gateway');
        }
        if (seen.has(piece.index)) continue;
        seen.add(piece.index);
        onDelta(piece.delta);
      } else if (event === 'done') {
        const done = parseJson(data, 'done');
        if (!isChatResponse(done)) throw new NetworkError('malformed done event from the gateway');
        return done;
      } else if (event === 'error') {
        const error = parseJson(data, 'error') as { error?: unknown; message?: unknown; status?: unknown };
        const code = typeof error.error === 'string' ? error.error : 'stream_error';
        const message = typeof error.message === 'string' ? error.message : code;
        const status = typeof error.status === 'number' ? error.status : (STREAM_ERROR_STATUS[code] ?? 500);
        throw new ChatStreamError(status, code, message, replayed);
      }
      // Other events (none today) are ignored: a newer gateway may add some.
    }
  } catch (error) {
    if (signal.aborted) throw abortError();
    if (error instanceof ApiError || error instanceof NetworkError) throw error;
    throw new NetworkError(error instanceof Error ? error.message : String(error));
  }
  if (signal.aborted) throw abortError();
  throw new NetworkError('the stream ended before its answer was complete');
}

/** What the gateway found when asked to cancel: stopped now (or by an earlier cancel), or already ended. */
export type CancelOutcome = 'cancelled' | 'already_answered' | 'already_failed';
const CANCEL_OUTCOMES: readonly string[] = ['cancelled', 'already_answered', 'already_failed'];

/**
 * `POST /mcp/v1/chat/cancel`: stop the chat sent under `idempotencyKey`. Aborting the stream is
 * not enough: the gateway keeps a keyed chat running when its caller leaves (so a retry gets the
 * answer), and the node would spend its tokens for nobody. After `cancelled`, a retry with the key
 * gets a 409 `chat_cancelled`. Rejects with ApiError (404 `idempotency_key_not_found`: the gateway
 * never stored the key, e.g. the request never reached it; 503 `idempotency_unavailable`) or
 * NetworkError.
 */
export async function cancelChat(idempotencyKey: string, signal?: AbortSignal): Promise<CancelOutcome> {
  const response = await apiFetch(CHAT_CANCEL_PATH, {
    method: 'POST',
    body: JSON.stringify({ idempotency_key: idempotencyKey }),
    signal,
  });
  const body = (await response.json().catch(() => null)) as { status?: unknown } | null;
  const status = body?.status;
  if (typeof status !== 'string' || !CANCEL_OUTCOMES.includes(status)) {
    throw new ApiError(response.status, 'malformed_response', 'the cancel answer has no known status');
  }
  return status as CancelOutcome;
}

/** `GET /mcp/v1/models`: the catalogue, the `auto` classes and the edge nodes' own models. */
export async function fetchModels(signal?: AbortSignal): Promise<ModelOption[]> {
  const response = await apiFetch(MODELS_PATH, { signal });
  const body = (await response.json()) as { models?: unknown };
  if (!Array.isArray(body.models)) throw new ApiError(response.status, 'malformed_response', 'no models list');
  return body.models as ModelOption[];
}
