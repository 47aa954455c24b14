/**
 * The page's IndexedDB (database `koprogo`, via `idb`): one schema, one `openDb()`.
 *
 * - `messages`: every chat message of every copro on this device, keyPath `id`, index
 *   `by_copro_created` on [copro, createdAt] (IndexedDB keys cannot be null: no copro is '').
 * - `session`: out-of-line keys; session.ts keeps the signed-in session under 'current'.
 *
 * A user message carries its outbox state (idempotency key, the request body frozen at its first
 * attempt, retry timing), so a reload mid-send finds it and sends it again under the same key.
 */
import { openDB, type DBSchema, type IDBPDatabase } from 'idb';
import type { ChatRequestBody, ExecutionInfo, RoutingChoice, Usage } from './chat-api';

export const DB_NAME = 'koprogo';
export const DB_VERSION = 1;

export type MessageStatus = 'queued' | 'sending' | 'streaming' | 'done' | 'failed' | 'stopped';

export interface ChatMessageView {
  id: string;
  copro: string | null;
  role: 'user' | 'assistant';
  content: string;
  status: MessageStatus;
  createdAt: number;
  model: string;
  routing: RoutingChoice;
  /** assistant: the user message it answers */
  replyTo?: string;
  answer?: { id: string; model: string; finish_reason: string; usage: Usage; execution_info: ExecutionInfo };
  /** `retryable`: still queued and will be sent again by itself; else the message failed. */
  error?: { code: string; message: string; retryable: boolean };
}

/** A message as stored: the view plus the outbox's bookkeeping (user messages only). */
export interface StoredMessage extends ChatMessageView {
  /** The signed-in user (`sub`) who wrote it, or whose question it answers: a device may be shared. */
  owner?: string;
  /** user: the Idempotency-Key every attempt of this message is sent with */
  idempotencyKey?: string;
  /** user: the body of the first attempt, sent unchanged by every retry (the gateway fingerprints it) */
  request?: ChatRequestBody;
  /** user: attempts made so far (for the backoff) */
  attempts?: number;
  /** user, queued after a failure: not sent before this time (ms since the epoch) */
  retryAt?: number;
  /** user: the wait comes from the gateway (Retry-After), not from the network: an `online` event does not shorten it */
  retryAtFromServer?: boolean;
  /** user: the assistant message that answers it */
  answerId?: string;
  /** user, failed: the gateway stored this error as the key's outcome (the same key can only replay it) */
  keySettled?: boolean;
  /** user: when its first attempt left (ms since the epoch); past KEY_LIFETIME_MS it is not resent */
  firstSentAt?: number;
}

interface StoredRecord extends Omit<StoredMessage, 'copro'> {
  copro: string;
}

export interface KoproGoSchema extends DBSchema {
  messages: {
    key: string;
    value: StoredRecord;
    indexes: { by_copro_created: [string, number] };
  };
  session: {
    key: string;
    value: unknown;
  };
}

export type KoproGoDb = IDBPDatabase<KoproGoSchema>;

let opening: Promise<KoproGoDb> | null = null;

/** The database, opened (and created or upgraded) once per page. */
export function openDb(): Promise<KoproGoDb> {
  opening ??= openDB<KoproGoSchema>(DB_NAME, DB_VERSION, {
    upgrade(db, oldVersion) {
      if (oldVersion < 1) {
        const messages = db.createObjectStore('messages', { keyPath: 'id' });
        messages.createIndex('by_copro_created', ['copro', 'createdAt']);
        db.createObjectStore('session');
      }
    },
    blocking() {
      // A newer version of the page (another tab) wants to upgrade: let it, open again next time.
      void closeDb();
    },
    terminated() {
      opening = null;
    },
  }).catch((error: unknown) => {
    opening = null;
    throw error;
  });
  return opening;
}

/** Close the connection (a newer page needs the database, or a test starts afresh). */
export async function closeDb(): Promise<void> {
  const db = opening;
  opening = null;
  if (db) (await db.catch(() => null))?.close();
}

function toRecord(message: StoredMessage): StoredRecord {
  return { ...message, copro: message.copro ?? '' };
}

function fromRecord(record: StoredRecord): StoredMessage {
  return { ...record, copro: record.copro === '' ? null : record.copro };
}

/** Store (insert or replace) one message. */
export async function putMessage(message: StoredMessage): Promise<void> {
  const db = await openDb();
  await db.put('messages', toRecord(message));
}

export async function getMessage(id: string): Promise<StoredMessage | undefined> {
  const db = await openDb();
  const record = await db.get('messages', id);
  return record && fromRecord(record);
}

export async function deleteMessage(id: string): Promise<void> {
  const db = await openDb();
  await db.delete('messages', id);
}

function coproRange(copro: string | null): IDBKeyRange {
  const key = copro ?? '';
  return IDBKeyRange.bound([key, -Infinity], [key, Infinity]);
}

/** A copro's messages, oldest first. */
export async function listMessages(copro: string | null): Promise<StoredMessage[]> {
  const db = await openDb();
  const records = await db.getAllFromIndex('messages', 'by_copro_created', coproRange(copro));
  return records.map(fromRecord);
}

/** Every copro's messages in `statuses` (the outbox's work), oldest first. */
export async function messagesWithStatus(statuses: readonly MessageStatus[]): Promise<StoredMessage[]> {
  const db = await openDb();
  const records = await db.getAll('messages');
  return records
    .filter((r) => statuses.includes(r.status))
    .map(fromRecord)
    .sort((a, b) => a.createdAt - b.createdAt);
}

/** Forget a copro's messages on this device (only `owner`'s when given). */
export async function deleteMessages(copro: string | null, owner?: string): Promise<void> {
  const db = await openDb();
  const tx = db.transaction('messages', 'readwrite');
  const index = tx.store.index('by_copro_created');
  for (let cursor = await index.openCursor(coproRange(copro)); cursor; cursor = await cursor.continue()) {
    // The owner's, and those written before messages had owners (every user sees them).
    const theirs = cursor.value.owner === owner || cursor.value.owner === undefined;
    if (owner === undefined || theirs) await cursor.delete();
  }
  await tx.done;
}

/**
 * Sign-out on a shared device: `owner`'s conversations leave it, in every copro. Messages still
 * to send (queued, sending) stay, so nothing typed is lost: they go, under their keys, once
 * their owner signs in again, and nobody else sees them meanwhile.
 */
export async function forgetHistoryOf(owner: string): Promise<number> {
  const db = await openDb();
  const tx = db.transaction('messages', 'readwrite');
  let removed = 0;
  for (let cursor = await tx.store.openCursor(); cursor; cursor = await cursor.continue()) {
    const message = cursor.value;
    if (message.owner === owner && message.status !== 'queued' && message.status !== 'sending') {
      await cursor.delete();
      removed++;
    }
  }
  await tx.done;
  return removed;
}
