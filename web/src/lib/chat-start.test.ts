import { IDBFactory } from 'fake-indexeddb';
import { flushSync } from 'svelte';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { app } from './app.svelte';
import { FakeChatGateway, ManualClock } from './chat-fakes';
import { ChatStore, startChat } from './chat-store.svelte';
import { closeDb } from './db';
import { memoryLock } from './outbox';

const COPRO = 'c0ffee00-0000-4000-8000-000000000001';
const OTHER = 'c0ffee00-0000-4000-8000-000000000002';

let gateway: FakeChatGateway;
let clock: ManualClock;
let store: ChatStore;
let stop: () => void;

beforeEach(async () => {
  await closeDb();
  globalThis.indexedDB = new IDBFactory();
  gateway = new FakeChatGateway();
  vi.stubGlobal('fetch', gateway.fetch);
  clock = new ManualClock();
  store = new ChatStore({ clock, lock: memoryLock(), storage: null });
  app.token = 'token-1';
  app.online = true;
  app.copro = COPRO;
  stop = startChat(store);
  flushSync();
  await vi.waitFor(() => expect(store.copro).toBe(COPRO));
});

afterEach(async () => {
  stop();
  store.stop();
  await store.whenIdle();
  store.close();
  vi.unstubAllGlobals();
  app.token = null;
  app.copro = null;
});

describe('startChat', () => {
  it('follows the selected copro', async () => {
    await store.send('Q');
    await store.whenIdle();
    app.copro = OTHER;
    flushSync();
    await vi.waitFor(() => expect(store.copro).toBe(OTHER));
    expect(store.messages).toEqual([]);
    app.copro = COPRO;
    flushSync();
    await vi.waitFor(() => expect(store.messages.map((m) => m.content)).toEqual(['Q', 'Bonjour']));
  });

  it('sends what was queued when the page gets back online', async () => {
    app.online = false;
    flushSync();
    await store.send('Q');
    await store.whenIdle();
    expect(gateway.calls).toHaveLength(0);
    app.online = true;
    flushSync();
    await vi.waitFor(() => expect(gateway.calls).toHaveLength(1));
  });

  it('retries at once on the browser’s online event instead of waiting out the backoff', async () => {
    gateway.plan({ kind: 'unreachable' });
    await store.send('Q');
    await store.whenIdle();
    expect(store.queued).toBe(1);
    window.dispatchEvent(new Event('online'));
    await vi.waitFor(() => expect(gateway.calls).toHaveLength(2));
    await store.whenIdle();
    expect(store.messages.map((m) => `${m.status}:${m.content}`)).toEqual(['done:Q', 'done:Bonjour']);
    expect(clock.now()).toBe(1_700_000_000_000); // no time passed
  });
});
