import { IDBFactory } from 'fake-indexeddb';
import { beforeEach, describe, expect, it } from 'vitest';
import {
  DB_NAME,
  closeDb,
  deleteMessages,
  forgetHistoryOf,
  getMessage,
  listMessages,
  messagesWithStatus,
  openDb,
  putMessage,
  type StoredMessage,
} from './db';

function message(id: string, copro: string | null, createdAt: number, status: StoredMessage['status'] = 'done'): StoredMessage {
  return { id, copro, role: 'user', content: id, status, createdAt, model: 'auto', routing: 'copro_default' };
}

beforeEach(async () => {
  await closeDb();
  globalThis.indexedDB = new IDBFactory();
});

describe('openDb', () => {
  it('creates the koprogo database: messages by copro and time, and the session store', async () => {
    const db = await openDb();
    expect(db.name).toBe(DB_NAME);
    expect([...db.objectStoreNames].sort()).toEqual(['messages', 'session']);
    const messages = db.transaction('messages').store;
    expect(messages.keyPath).toBe('id');
    expect(messages.index('by_copro_created').keyPath).toEqual(['copro', 'createdAt']);
    // The session store takes out-of-line keys (session.ts stores under 'current').
    await db.put('session', { token: 't' }, 'current');
    expect(await db.get('session', 'current')).toEqual({ token: 't' });
    expect(await openDb()).toBe(db);
  });
});

describe('messages', () => {
  it('lists a copro’s messages oldest first, and stores no copro as the empty string', async () => {
    await putMessage(message('b', 'c1', 20));
    await putMessage(message('a', 'c1', 10));
    await putMessage(message('x', 'c2', 15));
    await putMessage(message('n', null, 5));
    expect((await listMessages('c1')).map((m) => m.id)).toEqual(['a', 'b']);
    expect(await listMessages(null)).toEqual([message('n', null, 5)]);
    const raw = await (await openDb()).get('messages', 'n');
    expect(raw?.copro).toBe('');
    expect(await getMessage('n')).toEqual(message('n', null, 5));
  });

  it('replaces a message saved again under its id', async () => {
    await putMessage(message('a', 'c1', 10, 'queued'));
    await putMessage({ ...message('a', 'c1', 10), content: 'edited' });
    expect(await listMessages('c1')).toEqual([{ ...message('a', 'c1', 10), content: 'edited' }]);
  });

  it('finds every copro’s messages in some statuses, oldest first', async () => {
    await putMessage(message('late', 'c2', 30, 'queued'));
    await putMessage(message('early', 'c1', 10, 'queued'));
    await putMessage(message('done', 'c1', 20, 'done'));
    await putMessage(message('sending', null, 25, 'sending'));
    expect((await messagesWithStatus(['queued'])).map((m) => m.id)).toEqual(['early', 'late']);
    expect((await messagesWithStatus(['queued', 'sending'])).map((m) => m.id)).toEqual(['early', 'sending', 'late']);
  });

  it('deletes one copro’s messages only', async () => {
    await putMessage(message('a', 'c1', 10));
    await putMessage(message('b', 'c1', 11));
    await putMessage(message('x', 'c2', 12));
    await putMessage(message('n', null, 13));
    await deleteMessages('c1');
    expect(await listMessages('c1')).toEqual([]);
    expect((await listMessages('c2')).map((m) => m.id)).toEqual(['x']);
    await deleteMessages(null);
    expect(await listMessages(null)).toEqual([]);
    expect((await listMessages('c2')).map((m) => m.id)).toEqual(['x']);
  });

  it('clears a copro for its owner, with the messages written before owners, and nobody else’s', async () => {
    await putMessage({ ...message('alice', 'c1', 10), owner: 'alice' });
    await putMessage({ ...message('bob', 'c1', 11), owner: 'bob' });
    await putMessage(message('nobody', 'c1', 12));
    await deleteMessages('c1', 'alice');
    expect((await listMessages('c1')).map((m) => m.id)).toEqual(['bob']);
  });

  it('forgets a user’s conversations in every copro at sign-out, keeping what is still to send', async () => {
    await putMessage({ ...message('done', 'c1', 10), owner: 'alice' });
    await putMessage({ ...message('failed', 'c2', 11, 'failed'), owner: 'alice' });
    await putMessage({ ...message('queued', 'c2', 12, 'queued'), owner: 'alice' });
    await putMessage({ ...message('bob', 'c1', 13), owner: 'bob' });
    expect(await forgetHistoryOf('alice')).toBe(2);
    expect((await listMessages('c1')).map((m) => m.id)).toEqual(['bob']);
    expect((await listMessages('c2')).map((m) => m.id)).toEqual(['queued']);
  });
});
