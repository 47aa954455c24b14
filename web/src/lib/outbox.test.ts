import { afterEach, describe, expect, it, vi } from 'vitest';
import { answerFor, ManualClock } from './chat-fakes';
import type { StoredMessage } from './db';
import { ApiError, NetworkError } from './http';
import {
  KEY_LIFETIME_MS,
  CANCEL_ATTEMPTS,
  CANCEL_RETRY_MS,
  HISTORY_LIMIT,
  Outbox,
  type CancelChat,
  browserLock,
  conversationFor,
  memoryLock,
  queuedUserMessage,
  retryDelayMs,
  type OutboxStore,
  type SendChat,
} from './outbox';

function message(partial: Partial<StoredMessage> & Pick<StoredMessage, 'role' | 'content' | 'status' | 'createdAt'>): StoredMessage {
  return { id: `${partial.role}-${partial.createdAt}`, copro: 'c', model: 'auto', routing: 'copro_default', ...partial };
}

/** The outbox's store over a Map: what the IndexedDB-backed one does, without IndexedDB. */
function memoryStore(): OutboxStore & { all: Map<string, StoredMessage> } {
  const all = new Map<string, StoredMessage>();
  const sorted = () => [...all.values()].sort((a, b) => a.createdAt - b.createdAt);
  return {
    all,
    save: async (m) => void all.set(m.id, structuredClone(m)),
    remove: async (id) => void all.delete(id),
    get: async (id) => all.get(id),
    list: async (copro) => sorted().filter((m) => m.copro === copro),
    withStatus: async (statuses) => sorted().filter((m) => statuses.includes(m.status)),
  };
}

describe('retryDelayMs', () => {
  it('doubles from 1 s up to 30 s', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 20].map((n) => retryDelayMs(n, null))).toEqual([
      1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000,
    ]);
  });

  it('takes the gateway’s Retry-After as it is, even past 30 s', () => {
    expect(retryDelayMs(1, 7)).toBe(7000);
    expect(retryDelayMs(9, 120)).toBe(120_000);
  });
});

describe('conversationFor', () => {
  it('sends the earlier done messages only, the last HISTORY_LIMIT of them, then the new one', () => {
    const history: StoredMessage[] = [];
    for (let i = 0; i < 10; i++) {
      history.push(message({ role: 'user', content: `Q${i}`, status: 'done', createdAt: i * 10 }));
      history.push(message({ role: 'assistant', content: `R${i}`, status: 'done', createdAt: i * 10 + 0.5 }));
    }
    history.push(message({ role: 'user', content: 'failed', status: 'failed', createdAt: 101 }));
    history.push(message({ role: 'assistant', content: 'stopped', status: 'stopped', createdAt: 101.5 }));
    history.push(message({ role: 'user', content: 'queued earlier', status: 'queued', createdAt: 102 }));
    const next = message({ role: 'user', content: 'new', status: 'queued', createdAt: 200 });
    history.push(next);
    history.push(message({ role: 'user', content: 'later', status: 'done', createdAt: 300 }));

    const turns = conversationFor(next, history);
    expect(turns).toHaveLength(HISTORY_LIMIT + 1);
    expect(turns.map((t) => t.content)).toEqual([
      'Q4', 'R4', 'Q5', 'R5', 'Q6', 'R6', 'Q7', 'R7', 'Q8', 'R8', 'Q9', 'R9', 'new',
    ]);
    expect(turns.at(-1)).toEqual({ role: 'user', content: 'new' });
    expect(turns[1].role).toBe('assistant');
  });
});

describe('locks', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('memoryLock runs one holder at a time, in order, even when one fails', async () => {
    const lock = memoryLock();
    const events: string[] = [];
    const hold = (name: string, fail = false) =>
      lock(async () => {
        events.push(`${name}+`);
        await new Promise((r) => setTimeout(r, 5));
        events.push(`${name}-`);
        if (fail) throw new Error(name);
      });
    await Promise.allSettled([hold('a', true), hold('b'), hold('c')]);
    expect(events).toEqual(['a+', 'a-', 'b+', 'b-', 'c+', 'c-']);
  });

  it('browserLock takes the Web Lock of the origin when the browser has one', async () => {
    const names: string[] = [];
    vi.stubGlobal('navigator', {
      locks: { request: async (name: string, fn: () => Promise<unknown>) => (names.push(name), fn()) },
    });
    await expect(browserLock()(async () => 42)).resolves.toBe(42);
    expect(names).toEqual(['koprogo-outbox']);
  });

  it('browserLock falls back to this tab’s lock without Web Locks', async () => {
    vi.stubGlobal('navigator', {});
    await expect(browserLock()(async () => 'ok')).resolves.toBe('ok');
  });
});

describe('Outbox', () => {
  it('never has two sends in flight, however often run() is called', async () => {
    const store = memoryStore();
    for (let i = 0; i < 3; i++) await store.save(queuedUserMessage(`Q${i}`, 'c', 'auto', 'copro_default', 1000 + i));
    let inFlight = 0;
    let most = 0;
    const keys: string[] = [];
    const send: SendChat = async (body, key) => {
      keys.push(key);
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise((r) => setTimeout(r, 5));
      inFlight--;
      return answerFor(`answer to ${body.messages.at(-1)?.content}`);
    };
    const outbox = new Outbox({ send, store, clock: new ManualClock(), lock: memoryLock(), canSend: () => true });
    await Promise.all([outbox.run(), outbox.run({ online: true }), outbox.run(), outbox.run()]);
    expect(most).toBe(1);
    expect(new Set(keys).size).toBe(3);
    expect(keys).toHaveLength(3);
    expect([...store.all.values()].filter((m) => m.role === 'assistant').map((m) => m.content)).toEqual([
      'answer to Q0',
      'answer to Q1',
      'answer to Q2',
    ]);
  });

  it('holds the queue behind a message waiting to be retried (strict order)', async () => {
    const store = memoryStore();
    const first = queuedUserMessage('first', 'c', 'auto', 'copro_default', 1000);
    await store.save(first);
    await store.save(queuedUserMessage('second', 'c', 'auto', 'copro_default', 1001));
    const sent: string[] = [];
    let fail = true;
    const send: SendChat = async (body) => {
      sent.push(body.messages.at(-1)?.content ?? '');
      if (fail) {
        fail = false;
        throw new NetworkError();
      }
      return answerFor('ok');
    };
    const clock = new ManualClock();
    const outbox = new Outbox({ send, store, clock, lock: memoryLock(), canSend: () => true });
    await outbox.run();
    expect(sent).toEqual(['first']);
    clock.advance(1000);
    await vi.waitFor(() => expect(sent).toEqual(['first', 'first', 'second']));
  });

  it('keeps a message refused with 401 queued under its key, and sends it once signed in again', async () => {
    const store = memoryStore();
    const question = queuedUserMessage('Q', 'c', 'auto', 'copro_default', 1000);
    await store.save(question);
    let signedIn = true;
    const send = vi
      .fn<SendChat>()
      .mockImplementationOnce(async () => {
        signedIn = false; // what http.ts's expireSession does on a 401
        throw new ApiError(401, 'unauthorized', 'token expired');
      })
      .mockImplementationOnce(async () => answerFor('R'));
    const outbox = new Outbox({ send, store, clock: new ManualClock(), lock: memoryLock(), canSend: () => signedIn });
    await outbox.run({ online: true });
    expect(store.all.get(question.id)?.status).toBe('queued');
    expect([...store.all.values()].filter((m) => m.role === 'assistant')).toEqual([]);

    signedIn = true;
    await outbox.run({ online: true });
    expect(send).toHaveBeenCalledTimes(2);
    expect(send.mock.calls.map((c) => c[1])).toEqual([question.idempotencyKey, question.idempotencyKey]);
    expect(store.all.get(question.id)?.status).toBe('done');
  });

  it('does not resend a message first sent more than 23 h ago: it fails key_expired, and Retry takes a new key', async () => {
    const store = memoryStore();
    const clock = new ManualClock();
    const question = queuedUserMessage('Q', 'c', 'auto', 'copro_default', 1000);
    await store.save(question);
    const send = vi
      .fn<SendChat>()
      .mockRejectedValueOnce(new NetworkError()) // reached the gateway? nobody knows
      .mockImplementationOnce(async () => answerFor('R'));
    const outbox = new Outbox({ send, store, clock, lock: memoryLock(), canSend: () => true });
    await outbox.run({ online: true });
    expect(store.all.get(question.id)?.status).toBe('queued');

    clock.advance(KEY_LIFETIME_MS + 1); // a day offline: the gateway has forgotten the key
    await vi.waitFor(() => expect(store.all.get(question.id)?.status).toBe('failed'));
    expect(store.all.get(question.id)?.error?.code).toBe('key_expired');
    expect(send).toHaveBeenCalledTimes(1);

    await outbox.retry(question.id);
    await outbox.run({ online: true });
    expect(send).toHaveBeenCalledTimes(2);
    expect(send.mock.calls[1][1]).not.toBe(question.idempotencyKey);
    expect(store.all.get(question.id)?.status).toBe('done');
  });

  it('sends nothing while it cannot (offline or signed out)', async () => {
    const store = memoryStore();
    await store.save(queuedUserMessage('Q', 'c', 'auto', 'copro_default', 1000));
    const send = vi.fn<SendChat>();
    const outbox = new Outbox({ send, store, clock: new ManualClock(), lock: memoryLock(), canSend: () => false });
    await outbox.run({ online: true });
    expect(send).not.toHaveBeenCalled();
  });

  describe('stop', () => {
    afterEach(() => vi.restoreAllMocks());

    /** A send that streams one piece, then hangs until aborted (as a long answer does). */
    const hangingSend: SendChat = (_body, _key, onDelta, signal) =>
      new Promise((_resolve, reject) => {
        onDelta('Bon');
        signal.addEventListener('abort', () => reject(new DOMException('stopped', 'AbortError')));
      });

    async function streaming(cancel: CancelChat) {
      const store = memoryStore();
      const question = queuedUserMessage('Q', 'c', 'auto', 'copro_default', 1000);
      await store.save(question);
      const clock = new ManualClock();
      const outbox = new Outbox({ send: hangingSend, cancel, store, clock, lock: memoryLock(), canSend: () => true });
      const running = outbox.run();
      await vi.waitFor(() => expect(outbox.sendingId).toBe(question.id));
      return { store, outbox, running, question, clock };
    }

    const states = (store: ReturnType<typeof memoryStore>) =>
      [...store.all.values()].map((m) => `${m.role}:${m.status}:${m.content}`);

    it('aborts the stream and asks the gateway to cancel the chat under the live message’s key', async () => {
      const cancel = vi.fn<CancelChat>(async () => 'cancelled');
      const { store, outbox, running, question } = await streaming(cancel);

      expect(outbox.stop()).toBe(true);
      await running;

      expect(cancel).toHaveBeenCalledTimes(1);
      expect(cancel).toHaveBeenCalledWith(question.idempotencyKey);
      expect(states(store)).toEqual(['user:done:Q', 'assistant:stopped:Bon']);
      expect(outbox.stop()).toBe(false); // nothing live any more: no second cancel
      expect(cancel).toHaveBeenCalledTimes(1);
    });

    it('keeps the partial text when the gateway had already finished the answer', async () => {
      const { store, outbox, running } = await streaming(async () => 'already_answered');
      outbox.stop();
      await running;
      expect(states(store)).toEqual(['user:done:Q', 'assistant:stopped:Bon']);
    });

    it('asks again when the key is not stored yet (404 right after Stop), then stops asking', async () => {
      const notYet = new ApiError(404, 'idempotency_key_not_found', 'no such key');
      const cancel = vi.fn<CancelChat>().mockRejectedValueOnce(notYet).mockResolvedValueOnce('cancelled');
      const { outbox, running, question, clock } = await streaming(cancel);
      outbox.stop();
      await running;
      await vi.waitFor(() => expect(clock.pending).toHaveLength(1));
      clock.advance(CANCEL_RETRY_MS);
      await vi.waitFor(() => expect(cancel).toHaveBeenCalledTimes(2));
      expect(cancel.mock.calls.map((c) => c[0])).toEqual([question.idempotencyKey, question.idempotencyKey]);
      expect(clock.pending).toEqual([]); // it answered: no third ask
    });

    it('logs a cancel that fails, and the message stays stopped (never sent again)', async () => {
      const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
      const failure = new NetworkError();
      const cancel = vi.fn<CancelChat>(async () => Promise.reject(failure));
      const { store, outbox, running, clock } = await streaming(cancel);

      outbox.stop();
      await running;
      for (let attempt = 1; attempt < CANCEL_ATTEMPTS; attempt++) {
        await vi.waitFor(() => expect(clock.pending).toHaveLength(1));
        clock.advance(CANCEL_RETRY_MS * attempt);
      }
      await vi.waitFor(() => expect(warn).toHaveBeenCalledTimes(1));
      expect(cancel).toHaveBeenCalledTimes(CANCEL_ATTEMPTS);

      expect(warn.mock.calls[0]).toContain(failure);
      expect(states(store)).toEqual(['user:done:Q', 'assistant:stopped:Bon']);
      await outbox.run({ online: true });
      expect(states(store)).toEqual(['user:done:Q', 'assistant:stopped:Bon']);
    });

    it('cancels the live answer of a conversation being cleared (pause)', async () => {
      const cancel = vi.fn<CancelChat>(async () => 'cancelled');
      const { outbox, running, question } = await streaming(cancel);
      await outbox.pause('c');
      await running;
      expect(cancel).toHaveBeenCalledWith(question.idempotencyKey);
    });
  });
});
