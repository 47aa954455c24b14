import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError } from './http';
import {
  executeInit,
  pollDelayMs,
  pollTask,
  requestErrorMessage,
  submitTask,
  taskFailureMessage,
  taskPhase,
  verificationSummary,
  type TaskView,
} from './tasks-api';

const TASK_ID = '6f1c1c7e-8a51-4f3e-9d3c-0f4b2f0e9a11';

function view(status: TaskView['status'], extra: Partial<TaskView> = {}): TaskView {
  return {
    id: TASK_ID,
    task_type: 'summarize_meeting',
    status,
    result: null,
    error: null,
    created_at: '2026-12-02T09:00:00Z',
    updated_at: '2026-12-02T09:00:01Z',
    copro_id: 'copro-1',
    attempts: [],
    co2_grams: 0,
    verification: null,
    execution_type: 'grid',
    ...extra,
  };
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
}

/** A fake network: answers in order, records each request. */
function fakeFetch(...answers: (Response | Error)[]) {
  const calls: { url: string; init: RequestInit }[] = [];
  const fetch = vi.fn(async (url: string, init: RequestInit) => {
    calls.push({ url, init });
    const answer = answers.shift();
    if (!answer) throw new Error(`unexpected request ${init.method ?? 'GET'} ${url}`);
    if (answer instanceof Error) throw answer;
    return answer;
  });
  vi.stubGlobal('fetch', fetch);
  return calls;
}

/** A sleep that records what it was asked to wait, without waiting. */
function recordingSleep() {
  const waits: number[] = [];
  return { waits, sleep: async (ms: number) => void waits.push(ms) };
}

afterEach(() => vi.unstubAllGlobals());

describe('submitTask', () => {
  it('sends JSON with the idempotency key and returns the accepted task', async () => {
    const calls = fakeFetch(json(202, { id: TASK_ID, status: 'pending', result: null }, { Location: `/mcp/v1/tasks/${TASK_ID}` }));
    const accepted = await submitTask(
      { task_type: 'translate_document', copro_id: 'copro-1', input_data: { text: 'Bonjour', target_language: 'nl' } },
      'key-1',
    );
    expect(accepted.id).toBe(TASK_ID);
    expect(calls[0].url).toBe('/mcp/v1/execute');
    const headers = new Headers(calls[0].init.headers);
    expect(headers.get('Idempotency-Key')).toBe('key-1');
    expect(headers.get('Content-Type')).toBe('application/json');
    expect(JSON.parse(calls[0].init.body as string)).toEqual({
      task_type: 'translate_document',
      copro_id: 'copro-1',
      input_data: { text: 'Bonjour', target_language: 'nl' },
    });
  });

  it('sends a file as multipart with the part "document"', () => {
    const file = new File(['month,category,amount_eur\n2024-01,chauffage,10'], 'charges.csv', { type: 'text/csv' });
    const init = executeInit({ task_type: 'predict_expenses', copro_id: 'c', input_data: { horizon_months: 6 }, document: file }, 'k');
    const form = init.body as FormData;
    expect(form.get('task_type')).toBe('predict_expenses');
    expect(form.get('copro_id')).toBe('c');
    expect(JSON.parse(form.get('input_data') as string)).toEqual({ horizon_months: 6 });
    expect((form.get('document') as File).name).toBe('charges.csv');
    // The browser sets the multipart boundary itself: no Content-Type from us.
    expect(new Headers(init.headers).has('Content-Type')).toBe(false);
  });

  it('waits out a 429 for its Retry-After and sends again with the same key', async () => {
    const calls = fakeFetch(
      json(429, { error: 'rate_limited', message: 'slow down' }, { 'Retry-After': '7' }),
      json(202, { id: TASK_ID, status: 'pending', result: null }),
    );
    const { waits, sleep } = recordingSleep();
    const seen: number[] = [];
    const accepted = await submitTask({ task_type: 'ocr_invoice', copro_id: null, input_data: {} }, 'key-2', {
      sleep,
      onRateLimited: (s) => seen.push(s),
    });
    expect(accepted.id).toBe(TASK_ID);
    expect(waits).toEqual([7000]);
    expect(seen).toEqual([7]);
    expect(calls.map((c) => new Headers(c.init.headers).get('Idempotency-Key'))).toEqual(['key-2', 'key-2']);
  });

  it('gives up after the allowed 429 waits, with the gateway code', async () => {
    fakeFetch(json(429, { error: 'rate_limited', message: 'x' }, { 'Retry-After': '1' }), json(429, { error: 'rate_limited', message: 'x' }));
    const { sleep } = recordingSleep();
    const error = await submitTask({ task_type: 'ocr_invoice', copro_id: null, input_data: {} }, 'k', { sleep, maxRateLimitWaits: 1 }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).code).toBe('rate_limited');
  });

  it('turns the gateway codes into friendly messages', async () => {
    fakeFetch(json(413, { error: 'document_too_large', message: 'the document is larger than 20971520 bytes' }));
    const error = await submitTask({ task_type: 'ocr_invoice', copro_id: null, input_data: {} }, 'k').catch((e: unknown) => e);
    expect(requestErrorMessage(error).key).toBe('actions.errors.documentTooLarge');
    expect(requestErrorMessage(new ApiError(422, 'unsupported_document', 'a zip')).key).toBe('actions.errors.unsupportedDocument');
    expect(requestErrorMessage(new ApiError(422, 'document_store_not_configured', '')).key).toBe('actions.errors.documentStore');
    expect(requestErrorMessage(new ApiError(503, 'bus_unavailable', '')).key).toBe('actions.errors.unavailable');
    expect(requestErrorMessage(new TypeError('x')).key).toBe('actions.errors.unknown');
  });

  it('reports an unreachable gateway as a network error (to retry with the same key)', async () => {
    fakeFetch(new TypeError('Failed to fetch'));
    const error = await submitTask({ task_type: 'ocr_invoice', copro_id: null, input_data: {} }, 'k').catch((e: unknown) => e);
    expect(requestErrorMessage(error).key).toBe('actions.errors.network');
  });
});

describe('pollTask', () => {
  it('reads the task until it has completed, reporting each status', async () => {
    const calls = fakeFetch(
      json(200, view('pending')),
      json(200, view('running', { attempts: [{ attempt: 1, node_id: 'pi-1', started_at: null, ended_at: null, outcome: null }] })),
      json(200, view('completed', { result: { summary: 'ok' } })),
    );
    const { waits, sleep } = recordingSleep();
    const statuses: string[] = [];
    const task = await pollTask(TASK_ID, { sleep, now: () => 0, onUpdate: (t) => statuses.push(t.status) });
    expect(task.result).toEqual({ summary: 'ok' });
    expect(statuses).toEqual(['pending', 'running', 'completed']);
    expect(calls.every((c) => c.url === `/mcp/v1/tasks/${TASK_ID}`)).toBe(true);
    expect(waits).toEqual([1000, 1250]);
  });

  it('waits out a 429 for its Retry-After before reading again', async () => {
    fakeFetch(json(200, view('running')), json(429, { error: 'rate_limited', message: 'x' }, { 'Retry-After': '4' }), json(200, view('completed')));
    const { waits, sleep } = recordingSleep();
    const limited: number[] = [];
    const task = await pollTask(TASK_ID, { sleep, now: () => 0, onRateLimited: (s) => limited.push(s) });
    expect(task.status).toBe('completed');
    expect(waits).toEqual([1000, 4000]);
    expect(limited).toEqual([4]);
  });

  it('keeps following through a lost connection and says so', async () => {
    fakeFetch(json(200, view('running')), new TypeError('Failed to fetch'), json(200, view('verifying')), json(200, view('completed')));
    const { waits, sleep } = recordingSleep();
    const connection: boolean[] = [];
    await pollTask(TASK_ID, { sleep, now: () => 0, onConnection: (lost) => connection.push(lost) });
    expect(connection).toEqual([true, false]);
    expect(waits[1]).toBeGreaterThanOrEqual(3000);
  });

  it('returns a failed task with its reason', async () => {
    fakeFetch(
      json(200, view('failed', { error: { error: 'input_error', message: 'horizon_months must be a whole number of months from 1 to 60' } })),
    );
    const task = await pollTask(TASK_ID, { sleep: async () => {} });
    expect(taskPhase(task.status)).toBe('failed');
    expect(taskFailureMessage(task).key).toBe('actions.failure.inputError');
    expect(task.error?.message).toContain('horizon_months');
  });

  it('stops on a refusal that waiting cannot fix', async () => {
    fakeFetch(json(404, { error: 'not_found', message: 'no task' }));
    await expect(pollTask(TASK_ID, { sleep: async () => {} })).rejects.toMatchObject({ status: 404, code: 'not_found' });
  });

  it('slows down as the task takes longer', () => {
    expect(pollDelayMs(0, 0)).toBe(1000);
    expect(pollDelayMs(10, 30_000)).toBe(2000);
    expect(pollDelayMs(40, 61_000)).toBe(5000);
  });
});

describe('what the page shows of a task', () => {
  it('folds the grid statuses into five phases', () => {
    expect(['pending', 'assigned', 'running', 'verifying', 'completed', 'failed', 'expired', 'cancelled'].map(taskPhase)).toEqual([
      'queued',
      'queued',
      'running',
      'verifying',
      'completed',
      'failed',
      'failed',
      'failed',
    ]);
    expect(taskFailureMessage(view('expired')).key).toBe('actions.failure.expired');
  });

  it('summarises the verification', () => {
    const base = { quorum: 2, max_replicas: 3, replicas: [], agreement: 2 };
    expect(verificationSummary(null)).toBeNull();
    expect(verificationSummary({ ...base, policy: 'quorum', outcome: 'accepted' })).toEqual({
      key: 'actions.verification.quorum',
      params: { agreement: 2, quorum: 2 },
    });
    expect(verificationSummary({ ...base, policy: 'trusted', outcome: 'accepted' })?.key).toBe('actions.verification.trusted');
    expect(verificationSummary({ ...base, policy: 'quorum', outcome: 'accepted_unchecked' })?.key).toBe('actions.verification.unchecked');
    expect(verificationSummary({ ...base, agreement: 1, policy: 'quorum', outcome: 'pending' })?.params).toEqual({ agreement: 1, quorum: 2 });
  });
});
