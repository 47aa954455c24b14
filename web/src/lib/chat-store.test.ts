import { IDBFactory } from 'fake-indexeddb';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { app } from './app.svelte';
import { FakeChatGateway, ManualClock, jsonResponse } from './chat-fakes';
import { ChatStore } from './chat-store.svelte';
import { closeDb, listMessages, type ChatMessageView } from './db';
import { CANCEL_ATTEMPTS, CANCEL_RETRY_MS, memoryLock, type Lock } from './outbox';

const COPRO = 'c0ffee00-0000-4000-8000-000000000001';
const OTHER_COPRO = 'c0ffee00-0000-4000-8000-000000000002';

let gateway: FakeChatGateway;
let clock: ManualClock;
let storage: Map<string, string>;
const stores: ChatStore[] = [];

function newStore(lock: Lock = memoryLock(), canSend?: () => boolean): ChatStore {
  const store = new ChatStore({
    clock,
    lock,
    canSend,
    storage: { getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => void storage.set(k, v) },
  });
  stores.push(store);
  return store;
}

const users = (store: ChatStore) => store.messages.filter((m) => m.role === 'user');
const assistants = (store: ChatStore) => store.messages.filter((m) => m.role === 'assistant');
const shape = (messages: ChatMessageView[]) => messages.map((m) => `${m.role}:${m.status}:${m.content}`);

beforeEach(async () => {
  await closeDb();
  globalThis.indexedDB = new IDBFactory();
  gateway = new FakeChatGateway();
  vi.stubGlobal('fetch', gateway.fetch);
  clock = new ManualClock();
  storage = new Map();
  app.token = 'token-1';
  app.online = true;
});

afterEach(async () => {
  for (const store of stores.splice(0)) {
    store.stop();
    await store.whenIdle();
    store.close();
  }
  vi.unstubAllGlobals();
  app.token = null;
  app.claims = null;
});

describe('chat store: sending', () => {
  it('queues while offline, then sends in creation order, one at a time, each with the answers before it', async () => {
    gateway.plan(
      { kind: 'answer', pieces: ['R1'] },
      { kind: 'answer', pieces: ['R2'] },
      { kind: 'answer', pieces: ['R3'] },
    );
    app.online = false;
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q1');
    await store.send('Q2');
    await store.send('  Q3  ');
    await store.whenIdle();
    expect(gateway.calls).toHaveLength(0);
    expect(store.queued).toBe(3);
    expect(shape(store.messages)).toEqual(['user:queued:Q1', 'user:queued:Q2', 'user:queued:Q3']);

    app.online = true;
    // `online` fired twice: one drain, each message once.
    await Promise.all([store.kick({ online: true }), store.kick({ online: true })]);
    await store.whenIdle();

    expect(gateway.calls.map((c) => c.body.messages.map((m) => m.content))).toEqual([
      ['Q1'],
      ['Q1', 'R1', 'Q2'],
      ['Q1', 'R1', 'Q2', 'R2', 'Q3'],
    ]);
    expect(new Set(gateway.calls.map((c) => c.key)).size).toBe(3);
    expect(gateway.calls[0].body).toMatchObject({ model: 'auto', context: `copro:${COPRO}`, stream: true });
    expect(gateway.calls[0].body).not.toHaveProperty('routing');
    expect(shape(store.messages)).toEqual([
      'user:done:Q1',
      'assistant:done:R1',
      'user:done:Q2',
      'assistant:done:R2',
      'user:done:Q3',
      'assistant:done:R3',
    ]);
    expect(store.queued + store.sending + store.failed).toBe(0);
    expect(assistants(store)[0]).toMatchObject({
      replyTo: users(store)[0].id,
      answer: { id: 'answer-1', usage: { total_tokens: 12 }, execution_info: { execution_type: 'edge', node_id: 'pi-1' } },
    });
  });

  it('refuses a blank message', async () => {
    const store = newStore();
    await store.load(COPRO);
    await expect(store.send('  \n ')).rejects.toThrow(RangeError);
    expect(store.messages).toEqual([]);
  });

  it('sends up to the last 12 done messages with a new one', async () => {
    const store = newStore();
    await store.load(COPRO);
    for (let i = 1; i <= 8; i++) {
      gateway.plan({ kind: 'answer', pieces: [`R${i}`] });
      await store.send(`Q${i}`);
      await store.whenIdle();
    }
    const last = gateway.calls[7].body.messages.map((m) => m.content);
    expect(last).toEqual(['Q2', 'R2', 'Q3', 'R3', 'Q4', 'R4', 'Q5', 'R5', 'Q6', 'R6', 'Q7', 'R7', 'Q8']);
  });

  it('sends the chosen model and routing, remembered per copro', async () => {
    const store = newStore();
    await store.load(COPRO);
    store.model = 'auto:small';
    store.routing = 'edge_only';
    await store.send('Q');
    await store.whenIdle();
    expect(gateway.calls[0].body).toMatchObject({ model: 'auto:small', routing: { policy: 'edge_only' } });
    expect(store.messages[0]).toMatchObject({ model: 'auto:small', routing: 'edge_only' });

    await store.load(OTHER_COPRO);
    expect([store.model, store.routing, store.messages]).toEqual(['auto', 'copro_default', []]);
    await store.load(COPRO);
    expect([store.model, store.routing]).toEqual(['auto:small', 'edge_only']);
    expect(() => {
      store.routing = 'cheapest' as never;
    }).toThrow(RangeError);
  });
});

describe('chat store: exactly once', () => {
  it('retries a network error after 1 s with the same key and body', async () => {
    gateway.plan({ kind: 'unreachable' }, { kind: 'answer', pieces: ['Bon', 'jour'] });
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q');
    await store.whenIdle();
    expect(users(store)[0]).toMatchObject({ status: 'queued', error: { code: 'network', retryable: true } });
    expect(assistants(store)).toEqual([]);
    expect(clock.pending).toEqual([clock.now() + 1000]);

    clock.advance(999);
    await store.whenIdle();
    expect(gateway.calls).toHaveLength(1);
    clock.advance(1);
    await store.whenIdle();

    expect(gateway.calls).toHaveLength(2);
    expect(gateway.calls[1].key).toBe(gateway.calls[0].key);
    expect(gateway.calls[1].body).toEqual(gateway.calls[0].body);
    expect(shape(store.messages)).toEqual(['user:done:Q', 'assistant:done:Bonjour']);
    expect(users(store)[0].error).toBeUndefined();
  });

  it('backs off 1 s, 2 s, 4 s while unreachable, and an online event retries at once', async () => {
    gateway.plan({ kind: 'unreachable' }, { kind: 'unreachable' }, { kind: 'unreachable' }, { kind: 'answer', pieces: ['ok'] });
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q');
    await store.whenIdle();
    const waits: number[] = [];
    for (let i = 0; i < 2; i++) {
      const [at] = clock.pending;
      waits.push(at - clock.now());
      clock.advance(at - clock.now());
      await store.whenIdle();
    }
    waits.push(clock.pending[0] - clock.now());
    expect(waits).toEqual([1000, 2000, 4000]);
    expect(gateway.calls).toHaveLength(3);

    await store.kick({ online: true });
    await store.whenIdle();
    expect(gateway.calls).toHaveLength(4);
    expect(new Set(gateway.calls.map((c) => c.key)).size).toBe(1);
    expect(shape(store.messages)).toEqual(['user:done:Q', 'assistant:done:ok']);
  });

  it('gets the stored answer, run once, when the response was lost after the gateway got the request', async () => {
    gateway.plan({ kind: 'lost', pieces: ['Bon', 'jour', ' !'], after: 1 });
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q');
    await store.whenIdle();
    expect(users(store)[0]).toMatchObject({ status: 'queued', error: { code: 'network' } });

    clock.advance(1000);
    await store.whenIdle();

    expect(gateway.calls.map((c) => c.key)).toEqual([gateway.calls[0].key, gateway.calls[0].key]);
    expect(gateway.totalRuns).toBe(1);
    // The replay's single piece replaces the partial answer, not appended to it.
    expect(shape(store.messages)).toEqual(['user:done:Q', 'assistant:done:Bonjour !']);
  });

  it.each([
    [503, 'idempotency_unavailable'],
    [429, 'rate_limited'],
  ])('waits out Retry-After on a %i, even when the network comes back, then sends with the same key', async (status, code) => {
    gateway.plan({ kind: 'refuse', status, error: code, message: 'later', retryAfter: 5 });
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q');
    await store.whenIdle();
    expect(users(store)[0]).toMatchObject({ status: 'queued', error: { code, retryable: true } });
    expect(clock.pending).toEqual([clock.now() + 5000]);

    await store.kick({ online: true });
    clock.advance(4999);
    await store.whenIdle();
    expect(gateway.calls).toHaveLength(1);
    clock.advance(1);
    await store.whenIdle();
    expect(gateway.calls).toHaveLength(2);
    expect(gateway.calls[1].key).toBe(gateway.calls[0].key);
    expect(shape(store.messages)).toEqual(['user:done:Q', 'assistant:done:Bonjour']);
  });

  it('marks a 422 failed with its code, and goes on with the next message', async () => {
    gateway.plan({ kind: 'refuse', status: 422, error: 'validation_error', message: 'too many characters' });
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q1');
    await store.send('Q2');
    await store.whenIdle();
    expect(users(store)[0]).toMatchObject({
      status: 'failed',
      error: { code: 'validation_error', message: 'too many characters', retryable: false },
    });
    expect(store.failed).toBe(1);
    expect(clock.pending).toEqual([]);
    expect(gateway.calls).toHaveLength(2);
    // The failed message is no part of the next one's conversation.
    expect(gateway.calls[1].body.messages.map((m) => m.content)).toEqual(['Q2']);
    expect(shape(store.messages)).toEqual(['user:failed:Q1', 'user:done:Q2', 'assistant:done:Bonjour']);
  });

  it('retries a failed message under its same key when the gateway stored nothing for it', async () => {
    gateway.plan({ kind: 'refuse', status: 422, error: 'idempotency_key_reused', message: 'another body' });
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q');
    await store.whenIdle();
    expect(users(store)[0]).toMatchObject({ status: 'failed', error: { code: 'idempotency_key_reused' } });
    expect(clock.pending).toEqual([]); // never resent by itself
    await store.retry(users(store)[0].id);
    await store.whenIdle();
    expect(gateway.calls[1].key).toBe(gateway.calls[0].key);
    expect(shape(store.messages)).toEqual(['user:done:Q', 'assistant:done:Bonjour']);
  });

  it('retry() resolves once the message is queued again, not when its answer ends', async () => {
    gateway.plan(
      { kind: 'refuse', status: 403, error: 'forbidden', message: 'not your copro' },
      { kind: 'hang', pieces: ['Bon', 'jour'], after: 1 },
    );
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q');
    await store.whenIdle();
    expect(users(store)[0]).toMatchObject({ status: 'failed', error: { code: 'forbidden' } });
    await store.retry(users(store)[0].id); // would never resolve if it waited for the hanging answer
    await vi.waitFor(() => expect(shape(store.messages)).toEqual(['user:sending:Q', 'assistant:streaming:Bon']));
    expect(gateway.calls[1].key).toBe(gateway.calls[0].key);
  });

  it('fails on a streamed error the gateway stored under the key; retry() then needs a new key', async () => {
    gateway.plan({ kind: 'stream_error', error: 'timeout', message: 'no node answered', stored: true, pieces: ['par'] });
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q');
    await store.whenIdle();
    expect(shape(store.messages)).toEqual(['user:failed:Q', 'assistant:failed:par']);
    expect(users(store)[0].error).toEqual({ code: 'timeout', message: 'no node answered', retryable: false });

    await store.retry(users(store)[0].id);
    await store.whenIdle();
    expect(gateway.calls).toHaveLength(2);
    expect(gateway.calls[1].key).not.toBe(gateway.calls[0].key);
    expect(gateway.calls[1].body).toEqual(gateway.calls[0].body);
    expect(shape(store.messages)).toEqual(['user:done:Q', 'assistant:done:Bonjour']);
  });

  it('keeps a message queued under its key on a streamed node_changed', async () => {
    gateway.plan({ kind: 'stream_error', error: 'node_changed', message: 'moved', stored: false, pieces: ['a'] });
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q');
    await store.whenIdle();
    expect(shape(store.messages)).toEqual(['user:queued:Q']);
    clock.advance(1000);
    await store.whenIdle();
    expect(gateway.calls[1].key).toBe(gateway.calls[0].key);
    expect(shape(store.messages)).toEqual(['user:done:Q', 'assistant:done:Bonjour']);
  });

  it('stop() keeps the partial answer as stopped and never resends the question', async () => {
    gateway.plan({ kind: 'hang', pieces: ['Bon', 'jour'], after: 1 });
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q1');
    await vi.waitFor(() => expect(assistants(store)[0]?.content).toBe('Bon'));
    expect(store.streaming).toBe(true);
    expect(users(store)[0].status).toBe('sending');

    store.stop();
    await store.whenIdle();
    expect(store.streaming).toBe(false);
    expect(shape(store.messages)).toEqual(['user:done:Q1', 'assistant:stopped:Bon']);
    // The gateway keeps a keyed chat running when its stream is aborted: Stop cancels it there,
    // under the message's key, with the session's token.
    await vi.waitFor(() => expect(gateway.cancels).toHaveLength(1));
    expect(gateway.cancels[0]).toEqual({ key: gateway.calls[0].key, authorization: 'Bearer token-1' });
    clock.advance(60_000);
    await store.kick({ online: true });
    await store.whenIdle();
    expect(gateway.calls).toHaveLength(1);

    // A stopped answer is no part of the next conversation; its question is.
    await store.send('Q2');
    await store.whenIdle();
    expect(gateway.calls[1].body.messages.map((m) => m.content)).toEqual(['Q1', 'Q2']);
    // Stored as shown.
    expect((await listMessages(COPRO)).map((m) => `${m.role}:${m.status}:${m.content}`)).toEqual(shape(store.messages));
  });

  it('stop() while offline leaves the answer stopped and says, in the console, that the cancel failed', async () => {
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    gateway.plan({ kind: 'hang', pieces: ['Bon', 'jour'], after: 1 });
    gateway.cancelUnreachable = true;
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q1');
    await vi.waitFor(() => expect(assistants(store)[0]?.content).toBe('Bon'));

    store.stop();
    await store.whenIdle();
    // Asked again CANCEL_ATTEMPTS times in all (the key may not be stored yet), then logged.
    for (let attempt = 1; attempt < CANCEL_ATTEMPTS; attempt++) {
      await vi.waitFor(() => expect(clock.pending.length).toBeGreaterThan(0));
      clock.advance(CANCEL_RETRY_MS * attempt);
    }
    await vi.waitFor(() => expect(warn).toHaveBeenCalled());
    warn.mockRestore();

    expect(shape(store.messages)).toEqual(['user:done:Q1', 'assistant:stopped:Bon']);
    expect(assistants(store)[0].error).toBeUndefined();
    expect(gateway.calls).toHaveLength(1);
  });

  it('after a reload mid-send, shows the message queued again and gets its answer once, under its key', async () => {
    gateway.plan({ kind: 'hang', pieces: ['Bon', 'jour'], after: 1 });
    const before = newStore();
    await before.load(COPRO);
    await before.send('Q');
    await vi.waitFor(() => expect(assistants(before)[0]?.content).toBe('Bon'));
    // The page reloads: `before` is gone (its request hangs, as a dead page's would).
    app.online = false;
    const after = newStore();
    await after.load(COPRO);
    await after.whenIdle();
    expect(shape(after.messages)).toEqual(['user:queued:Q']);

    app.online = true;
    await after.kick({ online: true });
    await after.whenIdle();
    expect(gateway.calls.map((c) => c.key)).toEqual([gateway.calls[0].key, gateway.calls[0].key]);
    expect(gateway.calls[1].body).toEqual(gateway.calls[0].body);
    expect(gateway.totalRuns).toBe(1);
    expect(shape(after.messages)).toEqual(['user:done:Q', 'assistant:done:Bonjour']);
    stores.splice(stores.indexOf(before), 1); // its late 'stopped' write would race the assertions of other tests
    before.close();
  });

  it('two tabs sharing the lock send a message once', async () => {
    const lock = memoryLock(); // what navigator.locks is to two tabs
    const tabA = newStore(lock);
    const tabB = newStore(lock);
    await tabA.load(COPRO);
    await tabB.load(COPRO);
    await tabA.send('Q');
    await Promise.all([tabA.kick({ online: true }), tabB.kick({ online: true }), tabB.whenIdle(), tabA.whenIdle()]);
    expect(gateway.calls).toHaveLength(1);
    // The other tab hears of it (BroadcastChannel) and shows it without a reload.
    await vi.waitFor(() => expect(shape(tabB.messages)).toEqual(['user:done:Q', 'assistant:done:Bonjour']));
  });

  it('a tab shows what another tab streams, without a reload, and can stop it', async () => {
    gateway.plan({ kind: 'hang', pieces: ['Bon', 'jour'], after: 1 });
    const lock = memoryLock();
    const tabA = newStore(lock, () => false); // this tab never sends: tabB does
    const tabB = newStore(lock);
    await tabA.load(COPRO);
    await tabB.load(COPRO);
    await tabA.send('Q');
    void tabB.kick();
    for (const tab of [tabA, tabB]) {
      await vi.waitFor(() => expect(shape(tab.messages)).toEqual(['user:sending:Q', 'assistant:streaming:Bon']));
    }
    // Stop is pressed in the tab that shows the answer, not the one streaming it.
    tabA.stop();
    for (const tab of [tabA, tabB]) {
      await vi.waitFor(() => expect(shape(tab.messages)).toEqual(['user:done:Q', 'assistant:stopped:Bon']));
    }
    expect(gateway.calls).toHaveLength(1);
    // Cancelled once at the gateway, by the tab that streamed it.
    await vi.waitFor(() => expect(gateway.cancels.map((c) => c.key)).toEqual([gateway.calls[0].key]));
  });
});

describe('chat store: history', () => {
  it('restores a copro’s history from IndexedDB and keeps copros apart', async () => {
    const store = newStore();
    await store.load(COPRO);
    await store.send('Q');
    await store.whenIdle();
    await store.load(OTHER_COPRO);
    expect(store.messages).toEqual([]);
    const reloaded = newStore();
    await reloaded.load(COPRO);
    expect(shape(reloaded.messages)).toEqual(['user:done:Q', 'assistant:done:Bonjour']);
    expect(reloaded.messages[1].answer?.execution_info.co2_saved_grams).toBe(0.0036);
  });

  it('clear() forgets this copro only', async () => {
    const store = newStore();
    await store.load(OTHER_COPRO);
    await store.send('other');
    await store.whenIdle();
    await store.load(COPRO);
    await store.send('Q');
    await store.whenIdle();
    await store.clear();
    expect(store.messages).toEqual([]);
    expect(await listMessages(COPRO)).toEqual([]);
    expect((await listMessages(OTHER_COPRO)).map((m) => m.content)).toEqual(['other', 'Bonjour']);
  });

  it('on a shared device, shows and sends only the signed-in user’s messages', async () => {
    const claims = (sub: string) => ({ sub, copros: [COPRO], scope: 'mcp:read mcp:write', exp: 2_000_000_000 });
    app.claims = claims('alice');
    app.online = false;
    const store = newStore();
    await store.load(COPRO);
    await store.send('from alice');
    // Alice signs out, Bob signs in on the same device and the same copro.
    app.claims = claims('bob');
    app.token = 'token-bob';
    await store.load(COPRO);
    expect(store.messages).toEqual([]);
    app.online = true;
    await store.send('from bob');
    await store.whenIdle();
    expect(gateway.calls.map((c) => [c.authorization, c.body.messages.map((m) => m.content)])).toEqual([
      ['Bearer token-bob', ['from bob']],
    ]);
    await store.clear();
    // Alice again: her queued message is still there, and goes with her token.
    app.claims = claims('alice');
    app.token = 'token-alice';
    await store.load(COPRO);
    await store.whenIdle();
    expect(gateway.calls.map((c) => [c.authorization, c.body.messages.map((m) => m.content)])).toEqual([
      ['Bearer token-bob', ['from bob']],
      ['Bearer token-alice', ['from alice']],
    ]);
    expect(shape(store.messages)).toEqual(['user:done:from alice', 'assistant:done:Bonjour']);
    app.claims = null;
  });

  it('refreshModels fills models, or says why not', async () => {
    const model = { id: 'auto', name: 'Automatic choice (auto)', provider: 'auto', context_length: 8192, is_available: true, edge_compatible: true, supports: [] };
    vi.stubGlobal('fetch', async () => jsonResponse(200, { models: [model] }));
    const store = newStore();
    await store.refreshModels();
    expect([store.models, store.modelsError]).toEqual([[model], null]);
    vi.stubGlobal('fetch', async () => {
      throw new TypeError('Failed to fetch');
    });
    await store.refreshModels();
    expect([store.models, store.modelsError]).toEqual([[model], 'network']);
  });
});
