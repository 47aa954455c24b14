/**
 * Grid tasks from the page: `POST /mcp/v1/execute` (JSON, or multipart with the file part
 * `document`), then `GET /mcp/v1/tasks/{id}` until the task has ended. The shapes are the
 * gateway's (`domain/task_view.py`, `koprogo_shared.task_events`).
 *
 * Every submission carries an `Idempotency-Key` chosen by the caller: sending the same request
 * again with the same key (after a lost connection) gets the first submission's task, never a
 * second one. A 429 is waited out for its `Retry-After`, never hammered; the polling slows down
 * as the task takes longer. Nothing here touches the DOM or the catalogues: it returns message
 * keys, so it can be tested with a fake `fetch`.
 */
import type { MessageKey } from '../i18n';
import { ApiError, NetworkError, apiFetch } from './http';

export type TaskType = 'ocr_invoice' | 'translate_document' | 'summarize_meeting' | 'predict_expenses';
export type TaskStatus =
  | 'pending'
  | 'assigned'
  | 'running'
  | 'verifying'
  | 'completed'
  | 'failed'
  | 'expired'
  | 'cancelled';
/** What the page shows: the grid's eight statuses folded into five. */
export type TaskPhase = 'queued' | 'running' | 'verifying' | 'completed' | 'failed';

export const FINAL_STATUSES: ReadonlySet<string> = new Set(['completed', 'failed', 'expired', 'cancelled']);
/** The target languages `translate_document` accepts (`domain/task_request.py`). */
export const TARGET_LANGUAGES = ['fr', 'nl', 'en'] as const;
export type TargetLanguage = (typeof TARGET_LANGUAGES)[number];

export interface TaskAttempt {
  attempt: number;
  node_id: string;
  started_at: string | null;
  ended_at: string | null;
  outcome: string | null;
}

export interface TaskReplica {
  attempt: number;
  node_id: string;
  owner: string;
  trusted: boolean;
  verdict: string;
  co2_grams: number;
}

export interface TaskVerification {
  policy: 'quorum' | 'spot_check' | 'trusted';
  quorum: number;
  max_replicas: number;
  replicas: TaskReplica[];
  agreement: number;
  outcome: 'pending' | 'accepted' | 'accepted_unchecked' | 'unverifiable';
  note?: string | null;
}

/** `GET /mcp/v1/tasks/{id}`. */
export interface TaskView {
  id: string;
  task_type: string;
  status: TaskStatus;
  result: Record<string, unknown> | null;
  error: { error: string; message: string | null } | null;
  created_at: string;
  updated_at: string;
  copro_id: string | null;
  attempts: TaskAttempt[];
  co2_grams: number | null;
  verification?: TaskVerification | null;
  execution_type: 'grid';
}

/** `POST /mcp/v1/execute`'s 202 body. */
export interface TaskAccepted {
  id: string;
  status: 'pending';
  result: null;
  task_type: string;
  copro_id: string | null;
  created_at: string;
}

/** What the page submits: the seed's fields and, maybe, a file (sent as multipart). */
export interface TaskRequest {
  task_type: TaskType;
  copro_id: string | null;
  input_data: Record<string, unknown>;
  document?: File | null;
}

export type Sleep = (ms: number, signal?: AbortSignal) => Promise<void>;

/** A timer that an abort ends early (with an AbortError). */
export const sleep: Sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new DOMException('aborted', 'AbortError'));
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new DOMException('aborted', 'AbortError'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/** The fetch options of a submission: multipart when there is a file, JSON otherwise. */
export function executeInit(request: TaskRequest, idempotencyKey: string): RequestInit {
  const headers = { 'Idempotency-Key': idempotencyKey };
  if (request.document) {
    const form = new FormData();
    form.append('task_type', request.task_type);
    if (request.copro_id !== null) form.append('copro_id', request.copro_id);
    if (Object.keys(request.input_data).length > 0) form.append('input_data', JSON.stringify(request.input_data));
    form.append('document', request.document, request.document.name);
    return { method: 'POST', body: form, headers };
  }
  const body: Record<string, unknown> = { task_type: request.task_type, input_data: request.input_data };
  if (request.copro_id !== null) body.copro_id = request.copro_id;
  return { method: 'POST', body: JSON.stringify(body), headers };
}

export interface SubmitOptions {
  signal?: AbortSignal;
  sleep?: Sleep;
  /** Called before waiting out a 429, with the seconds to wait. */
  onRateLimited?: (seconds: number) => void;
  /** How many 429s are waited out before giving up (each waits its Retry-After). */
  maxRateLimitWaits?: number;
}

/** Seconds to wait after a 429 that names no Retry-After. */
const DEFAULT_RETRY_AFTER_S = 5;

/**
 * Submits the task; a 429 is waited out (its Retry-After) and sent again with the same key.
 * Throws ApiError (refused) or NetworkError (not reached: send again with the same key).
 */
export async function submitTask(
  request: TaskRequest,
  idempotencyKey: string,
  options: SubmitOptions = {},
): Promise<TaskAccepted> {
  const wait = options.sleep ?? sleep;
  const maxWaits = options.maxRateLimitWaits ?? 3;
  for (let waits = 0; ; waits++) {
    try {
      const response = await apiFetch('/mcp/v1/execute', { ...executeInit(request, idempotencyKey), signal: options.signal });
      return (await response.json()) as TaskAccepted;
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 429 || waits >= maxWaits) throw error;
      const seconds = error.retryAfterS ?? DEFAULT_RETRY_AFTER_S;
      options.onRateLimited?.(seconds);
      await wait(seconds * 1000, options.signal);
    }
  }
}

/**
 * How long to wait before the next read of a task: about a second at first, up to 2 s during the
 * first minute, then 5 s (a task waiting for a node can take minutes; reads count against the
 * user's rate limit).
 */
export function pollDelayMs(reads: number, elapsedMs: number): number {
  if (elapsedMs >= 60_000) return 5_000;
  return Math.min(1_000 * 1.25 ** reads, 2_000);
}

export interface PollOptions {
  signal?: AbortSignal;
  sleep?: Sleep;
  now?: () => number;
  /** Every read of the task, final one included. */
  onUpdate?: (task: TaskView) => void;
  /** The gateway was not reached (true) or is reached again (false): the task goes on meanwhile. */
  onConnection?: (lost: boolean) => void;
  /** A 429 (or a 503 with Retry-After) is being waited out, for this many seconds. */
  onRateLimited?: (seconds: number) => void;
}

/**
 * Reads the task until it has ended and returns it. A 429 waits its Retry-After; a 502/503/504
 * or a lost connection waits and reads again (the task runs on the grid meanwhile); any other
 * refusal (404, 401, 403) is thrown.
 */
export async function pollTask(taskId: string, options: PollOptions = {}): Promise<TaskView> {
  const wait = options.sleep ?? sleep;
  const now = options.now ?? Date.now;
  const started = now();
  let reads = 0;
  let lost = false;
  for (;;) {
    let delay: number;
    try {
      const response = await apiFetch(`/mcp/v1/tasks/${encodeURIComponent(taskId)}`, { signal: options.signal });
      const task = (await response.json()) as TaskView;
      if (lost) options.onConnection?.((lost = false));
      options.onUpdate?.(task);
      if (FINAL_STATUSES.has(task.status)) return task;
      delay = pollDelayMs(reads++, now() - started);
    } catch (error) {
      if (error instanceof NetworkError) {
        if (!lost) options.onConnection?.((lost = true));
        delay = Math.max(pollDelayMs(reads++, now() - started), 3_000);
      } else if (error instanceof ApiError && error.retryable) {
        const seconds = error.retryAfterS ?? DEFAULT_RETRY_AFTER_S;
        options.onRateLimited?.(seconds);
        delay = seconds * 1000;
      } else {
        throw error;
      }
    }
    await wait(delay, options.signal);
  }
}

/** Asks the grid to cancel a task still pending or running; the task as it is now. */
export async function cancelTask(taskId: string): Promise<TaskView> {
  const response = await apiFetch(`/mcp/v1/tasks/${encodeURIComponent(taskId)}`, { method: 'DELETE' });
  return (await response.json()) as TaskView;
}

export function taskPhase(status: TaskStatus | string): TaskPhase {
  switch (status) {
    case 'running':
      return 'running';
    case 'verifying':
      return 'verifying';
    case 'completed':
      return 'completed';
    case 'failed':
    case 'expired':
    case 'cancelled':
      return 'failed';
    default:
      return 'queued'; // pending, assigned
  }
}

/** Where the accepted result was computed: the last attempt that completed (else the last one). */
export function nodeOf(task: TaskView): string | null {
  const completed = task.attempts.filter((a) => a.outcome === 'completed');
  const attempt = completed.at(-1) ?? task.attempts.at(-1);
  return attempt?.node_id ?? null;
}

export interface Message {
  key: MessageKey;
  params?: Record<string, string | number>;
}

/** One short sentence on how the result was checked, or null before there is anything to say. */
export function verificationSummary(verification: TaskVerification | null | undefined): Message | null {
  if (!verification) return null;
  const params = { agreement: verification.agreement, quorum: verification.quorum };
  switch (verification.outcome) {
    case 'pending':
      return { key: 'actions.verification.pending', params };
    case 'accepted_unchecked':
      return { key: 'actions.verification.unchecked' };
    case 'unverifiable':
      return { key: 'actions.verification.unverifiable', params: { replicas: verification.replicas.length } };
    case 'accepted':
      if (verification.policy === 'trusted') return { key: 'actions.verification.trusted' };
      if (verification.policy === 'spot_check') return { key: 'actions.verification.spotCheck', params };
      return { key: 'actions.verification.quorum', params };
  }
}

const SUBMIT_ERRORS: Record<string, MessageKey> = {
  document_too_large: 'actions.errors.documentTooLarge',
  request_too_large: 'actions.errors.requestTooLarge',
  unsupported_document: 'actions.errors.unsupportedDocument',
  unsupported_media_type: 'actions.errors.unsupportedDocument',
  document_store_not_configured: 'actions.errors.documentStore',
  document_source_unavailable: 'actions.errors.documentStore',
  document_url_unsupported: 'actions.errors.documentStore',
  document_url_not_allowed: 'actions.errors.documentStore',
  document_not_found: 'actions.errors.documentStore',
  validation_error: 'actions.errors.invalid',
  idempotency_key_reused: 'actions.errors.keyReused',
  rate_limited: 'actions.errors.rateLimited',
  unauthorized: 'actions.errors.unauthorized',
  forbidden: 'actions.errors.forbidden',
  not_found: 'actions.errors.notFound',
  task_final: 'actions.errors.taskFinal',
};

/** The friendly message of a failed request: by the gateway's code, else by its status. */
export function requestErrorMessage(error: unknown): Message {
  if (error instanceof NetworkError) return { key: 'actions.errors.network' };
  if (error instanceof ApiError) {
    const known = SUBMIT_ERRORS[error.code];
    if (known) return { key: known, params: { seconds: error.retryAfterS ?? DEFAULT_RETRY_AFTER_S } };
    if (error.status === 429) return { key: 'actions.errors.rateLimited', params: { seconds: error.retryAfterS ?? DEFAULT_RETRY_AFTER_S } };
    if (error.status >= 500) return { key: 'actions.errors.unavailable' };
  }
  return { key: 'actions.errors.unknown' };
}

/** Why a task ended without a result, from its status and the grid's error code. */
export function taskFailureMessage(task: TaskView): Message {
  if (task.status === 'expired') return { key: 'actions.failure.expired' };
  if (task.status === 'cancelled') return { key: 'actions.failure.cancelled' };
  switch (task.error?.error) {
    case 'input_error':
      return { key: 'actions.failure.inputError' };
    case 'unverifiable':
      return { key: 'actions.failure.unverifiable' };
    case 'attempts_exhausted':
      return { key: 'actions.failure.attemptsExhausted' };
    default:
      return { key: 'actions.failure.other' };
  }
}
