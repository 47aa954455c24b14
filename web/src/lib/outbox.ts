/**
 * The chat's outbox: queued user messages are sent one at a time, in creation order, each under
 * its own Idempotency-Key, so a message is answered once however often it is sent.
 *
 * It works over a small port (`OutboxPort`: send, store, clock, lock, canSend), so the rules
 * below are unit-tested without a network or a browser:
 *
 * - A message's first attempt freezes its request body (the conversation as it then is): every
 *   retry sends that body unchanged, because the gateway fingerprints it and refuses the same
 *   key with another body (422 `idempotency_key_reused`).
 * - NetworkError, or an ApiError whose `retryable` is true: the message stays queued and is sent
 *   again under the SAME key after a backoff (1 s, 2 s, 4 s … 30 s) or the gateway's
 *   Retry-After; the queue waits for it (strict order). An `online` event cuts a network wait
 *   short, never a Retry-After.
 * - Any other ApiError: the message failed, with the gateway's code and message. When the error
 *   is the key's stored outcome (`ChatStreamError.settledUnderKey`), `retry()` gives the message
 *   a new key, since the old one can only replay that error; otherwise it keeps the key.
 * - stop(): the live answer is aborted; the assistant message is 'stopped' with its partial text,
 *   the user message is done and never sent again. The gateway is also asked to cancel the chat
 *   under its key (`cancel` port, `POST /mcp/v1/chat/cancel`): a keyed chat runs on at the gateway
 *   when its stream is aborted (so a retry gets the answer), and would spend the node's tokens for
 *   nobody. Fire and forget: the message is stopped whatever the gateway answers.
 * - One drain at a time per tab (`running`) and, across tabs, the `lock` port (Web Locks). Inside
 *   the lock nobody else is sending, so a message found 'sending' was left by a page that died
 *   (a reload mid-send): it is queued again and resent under its key, and the gateway replays its
 *   answer instead of running a second chat.
 */
import type { CancelOutcome, ChatRequestBody, ChatResponse, ChatTurn } from './chat-api';
import { ChatStreamError, chatRequestBody } from './chat-api';
import type { StoredMessage } from './db';
import { ApiError, NetworkError } from './http';
import { newId } from './ids';

/** How many earlier done messages of the copro go with a new one. */
export const HISTORY_LIMIT = 12;
export const BACKOFF_BASE_MS = 1000;
export const BACKOFF_MAX_MS = 30_000;
/** A cancel is asked up to this many times (1 s, then 2 s apart) when the key may not be stored yet. */
export const CANCEL_ATTEMPTS = 3;
export const CANCEL_RETRY_MS = 1000;
/**
 * How long after its first attempt a message is still sent again under its key. The gateway keeps
 * a key 24 h: past that, a resend would run as a new chat even if the first attempt had reached
 * it. Past 23 h the message fails `key_expired` instead, and Retry (a new key) is the user's call.
 */
export const KEY_LIFETIME_MS = 23 * 3600 * 1000;

export type SendChat = (
  body: ChatRequestBody,
  idempotencyKey: string,
  onDelta: (text: string) => void,
  signal: AbortSignal,
) => Promise<ChatResponse>;

/** Ask the gateway to stop generating the chat sent under `idempotencyKey` (chat-api's `cancelChat`). */
export type CancelChat = (idempotencyKey: string) => Promise<CancelOutcome>;

/** Where messages live; every state change goes through `save` (persisted, and shown). */
export interface OutboxStore {
  /** Persist (and show) a message; resolves once it is stored. */
  save(message: StoredMessage): Promise<void>;
  remove(id: string): Promise<void>;
  get(id: string): Promise<StoredMessage | undefined>;
  /** A copro's messages, oldest first. */
  list(copro: string | null): Promise<StoredMessage[]>;
  /** Messages of every copro in these statuses, oldest first. */
  withStatus(statuses: readonly StoredMessage['status'][]): Promise<StoredMessage[]>;
}

export interface Clock {
  now(): number;
  /** Call `fn` after `ms`; returns the cancel function. */
  setTimer(fn: () => void, ms: number): () => void;
}

/** Runs `fn` while holding the outbox's lock (no other drain, in this tab or another, at the same time). */
export type Lock = <T>(fn: () => Promise<T>) => Promise<T>;

export interface OutboxPort {
  send: SendChat;
  /** Without it, stop() only aborts the stream (the gateway then finishes a keyed chat for nobody). */
  cancel?: CancelChat;
  store: OutboxStore;
  clock: Clock;
  lock: Lock;
  /** Signed in and online. */
  canSend(): boolean;
  /** Told after each answer is stored (the costs panel reloads its figures). */
  answered?(copro: string | null): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimer(fn, ms) {
    const id = setTimeout(fn, ms);
    return () => clearTimeout(id);
  },
};

/** A mutex for this tab only. */
export function memoryLock(): Lock {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const result = tail.then(fn, fn);
    tail = result.catch(() => undefined);
    return result;
  };
}

/**
 * The Web Locks API's exclusive lock `name` when the browser has it (shared by every tab of the
 * origin), else `memoryLock()`. Without Web Locks two tabs may send the same message at once:
 * both send it under its key, the gateway runs it once and the later request waits for and
 * replays the first one's answer, so it is still answered once (and stored twice, identically).
 */
export function browserLock(name = 'koprogo-outbox'): Lock {
  const local = memoryLock();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const locks = typeof navigator !== 'undefined' ? navigator.locks : undefined;
    if (!locks || typeof locks.request !== 'function') return local(fn);
    return locks.request(name, () => fn()) as Promise<T>;
  };
}

/** The wait before attempt `attempts + 1`: 1 s, 2 s, 4 s … 30 s, or the gateway's Retry-After. */
export function retryDelayMs(attempts: number, retryAfterS: number | null): number {
  if (retryAfterS !== null && retryAfterS > 0) return retryAfterS * 1000;
  return Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, attempts - 1));
}

/** The turns sent with `message`: up to HISTORY_LIMIT earlier done messages of its copro, then it. */
export function conversationFor(message: StoredMessage, history: readonly StoredMessage[]): ChatTurn[] {
  const earlier = history
    .filter((m) => m.status === 'done' && m.createdAt < message.createdAt && m.id !== message.id && m.content !== '')
    .slice(-HISTORY_LIMIT)
    .map((m): ChatTurn => ({ role: m.role, content: m.content }));
  return [...earlier, { role: 'user', content: message.content }];
}

/** A new user message, queued, with its idempotency key. */
export function queuedUserMessage(
  text: string,
  copro: string | null,
  model: string,
  routing: StoredMessage['routing'],
  createdAt: number,
  owner?: string,
): StoredMessage {
  return {
    ...(owner !== undefined ? { owner } : {}),
    id: newId(),
    copro,
    role: 'user',
    content: text,
    status: 'queued',
    createdAt,
    model,
    routing,
    idempotencyKey: newId(),
    answerId: newId(),
    attempts: 0,
  };
}

interface LiveAttempt {
  userId: string;
  /** The Idempotency-Key it is sent under: what the gateway cancels it by. */
  key: string;
  copro: string | null;
  controller: AbortController;
}

export class Outbox {
  private running: Promise<void> | null = null;
  private again = false;
  private skipNetworkWait = false;
  private paused = false;
  private cancelTimer: (() => void) | null = null;
  private live: LiveAttempt | null = null;

  constructor(private readonly port: OutboxPort) {}

  /** The user message being sent now, if any. */
  get sendingId(): string | null {
    return this.live?.userId ?? null;
  }

  /** The copro of the message being sent now; undefined when none is. */
  get sendingCopro(): string | null | undefined {
    return this.live ? this.live.copro : undefined;
  }

  /**
   * Send what is queued, in order, until the queue is empty, a message must wait, or sending is
   * not possible. `online`: the network just came back, so network backoffs are cut short.
   * Concurrent calls share one drain (and make it look again when it ends).
   */
  run(options: { online?: boolean } = {}): Promise<void> {
    if (options.online) this.skipNetworkWait = true;
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.port.lock(() => this.drain());
        } while (this.again && !this.paused);
      } finally {
        this.running = null;
      }
    })();
    return this.running;
  }

  /** Abort the answer being streamed (its partial text is kept, status 'stopped') and ask the gateway to cancel it; false when none. */
  stop(): boolean {
    const live = this.live;
    if (!live) return false;
    live.controller.abort();
    this.requestCancel(live.key);
    return true;
  }

  /**
   * Start no new send until `resume()`, and abort `copro`'s live answer (every copro's when
   * `copro` is undefined); resolves once nothing of `copro` is being written any more. A live
   * answer of another copro runs on: it touches only its own messages.
   */
  async pause(copro?: string | null): Promise<void> {
    this.paused = true;
    const live = this.live;
    if (live && copro !== undefined && live.copro !== copro) return;
    if (live) {
      live.controller.abort();
      this.requestCancel(live.key); // its conversation is being cleared: nobody will read the answer
    }
    await this.running?.catch(() => undefined);
  }

  resume(): void {
    this.paused = false;
  }

  /** Queue a failed user message again (then `run()`): under its key, or a new one when the gateway settled the old key with the error. */
  async retry(messageId: string): Promise<void> {
    const message = await this.port.store.get(messageId);
    if (!message || message.role !== 'user') throw new RangeError(`no user message ${messageId}`);
    if (message.status !== 'failed') return;
    const settled = message.keySettled === true;
    const answer = message.answerId ? await this.port.store.get(message.answerId) : undefined;
    if (answer && answer.status !== 'done') await this.port.store.remove(answer.id);
    await this.port.store.save({
      ...message,
      status: 'queued',
      error: undefined,
      attempts: 0,
      retryAt: undefined,
      retryAtFromServer: undefined,
      keySettled: undefined,
      idempotencyKey: settled ? newId() : message.idempotencyKey,
      firstSentAt: settled ? undefined : message.firstSentAt,
    });
  }

  /**
   * Tell the gateway to stop generating the chat under `key`, without waiting for it: the message
   * is 'stopped' whatever it answers. 'already_answered' means the whole answer was generated (the
   * gateway keeps it under the key for 24 h) while the page keeps the partial text it showed:
   * acceptable, the user asked to stop, and nothing more was spent. A 404 or a network failure
   * right after Stop may only mean the chat's own POST is still on its way (its key not stored
   * yet): asked again `CANCEL_ATTEMPTS` times in all, `CANCEL_RETRY_MS` apart, then logged, not
   * shown (the user can do nothing about it, and the message is stopped either way).
   */
  private requestCancel(key: string, attempt = 1): void {
    const cancel = this.port.cancel;
    if (!cancel) return;
    cancel(key).catch((error: unknown) => {
      const maybeEarly =
        error instanceof NetworkError || (error instanceof ApiError && (error.status === 404 || error.retryable));
      if (maybeEarly && attempt < CANCEL_ATTEMPTS) {
        this.port.clock.setTimer(() => this.requestCancel(key, attempt + 1), CANCEL_RETRY_MS * attempt);
        return;
      }
      console.warn('the gateway could not be asked to cancel the stopped chat; it may run to its end', error);
    });
  }

  private async drain(): Promise<void> {
    this.cancelTimer?.();
    this.cancelTimer = null;
    await this.requeueAbandoned();
    while (!this.paused && this.port.canSend()) {
      const [next] = await this.port.store.withStatus(['queued']);
      if (!next || this.paused || !this.port.canSend()) return;
      const now = this.port.clock.now();
      if (next.retryAt !== undefined && next.retryAt > now) {
        if (!(this.skipNetworkWait && !next.retryAtFromServer)) {
          this.wakeAt(next.retryAt - now);
          return;
        }
      }
      this.skipNetworkWait = false;
      if (next.firstSentAt !== undefined && now - next.firstSentAt > KEY_LIFETIME_MS) {
        await this.port.store.save({
          ...next,
          status: 'failed',
          error: {
            code: 'key_expired',
            message: 'first sent more than 23 h ago: sending it again could run it twice',
            retryable: false,
          },
          keySettled: true, // a retry takes a new key
        });
        continue;
      }
      await this.attempt(next);
    }
  }

  private wakeAt(ms: number): void {
    this.cancelTimer = this.port.clock.setTimer(() => {
      this.cancelTimer = null;
      void this.run();
    }, ms);
  }

  /** Inside the lock nobody sends: a message still 'sending' (its answer 'streaming') was left by a page that died. */
  private async requeueAbandoned(): Promise<void> {
    for (const stale of await this.port.store.withStatus(['sending', 'streaming'])) {
      if (stale.role === 'assistant') await this.port.store.remove(stale.id);
      else await this.port.store.save({ ...stale, status: 'queued' });
    }
  }

  private async attempt(queued: StoredMessage): Promise<void> {
    const { store } = this.port;
    const key = queued.idempotencyKey ?? newId();
    const request =
      queued.request ??
      chatRequestBody(
        queued.model,
        conversationFor(queued, await store.list(queued.copro)),
        queued.copro,
        queued.routing,
      );
    // Paused while the conversation was read (its copro is being cleared): leave it alone.
    if (this.paused) return;
    const user: StoredMessage = {
      ...queued,
      idempotencyKey: key,
      request,
      answerId: queued.answerId ?? newId(),
      status: 'sending',
      attempts: (queued.attempts ?? 0) + 1,
      retryAt: undefined,
      retryAtFromServer: undefined,
      firstSentAt: queued.firstSentAt ?? this.port.clock.now(),
    };
    // Live before anything is shown as sending: a Stop pressed at once aborts this attempt.
    const controller = new AbortController();
    this.live = { userId: user.id, key, copro: user.copro, controller };
    try {
      await store.save(user);
    } catch (error) {
      this.live = null;
      throw error;
    }
    const assistant: StoredMessage = {
      ...(user.owner !== undefined ? { owner: user.owner } : {}),
      id: user.answerId as string,
      copro: user.copro,
      role: 'assistant',
      content: '',
      status: 'streaming',
      // Right after its question, whatever was typed while it waited.
      createdAt: user.createdAt + 0.5,
      model: user.model,
      routing: user.routing,
      replyTo: user.id,
    };
    try {
      await store.save(assistant);
      const onDelta = (text: string) => {
        assistant.content += text;
        void store.save({ ...assistant });
      };
      const response = await this.port.send(request, key, onDelta, controller.signal);
      await store.save({
        ...assistant,
        content: response.content,
        status: 'done',
        model: response.model,
        answer: {
          id: response.id,
          model: response.model,
          finish_reason: response.finish_reason,
          usage: response.usage,
          execution_info: response.execution_info,
        },
      });
      await store.save({ ...user, status: 'done', error: undefined });
      this.port.answered?.(user.copro);
    } catch (error) {
      await this.settleFailure(user, assistant, error, controller.signal.aborted);
    } finally {
      this.live = null;
    }
  }

  private async settleFailure(
    user: StoredMessage,
    assistant: StoredMessage,
    error: unknown,
    aborted: boolean,
  ): Promise<void> {
    const { store } = this.port;
    if (aborted) {
      await store.save({ ...assistant, status: 'stopped' });
      await store.save({ ...user, status: 'done', error: undefined });
      return;
    }
    if (error instanceof ApiError && error.status === 401) {
      // The session ended (expired, or the gateway's secret rotated): the page is back at sign-in
      // (http.ts). The message waits, queued under its key, and goes once someone signs in again
      // as its owner; the partial answer is dropped (it comes again whole).
      await store.remove(assistant.id);
      await store.save({
        ...user,
        status: 'queued',
        error: { code: error.code, message: error.message, retryable: true },
        retryAt: undefined,
        retryAtFromServer: undefined,
      });
      return;
    }
    if (error instanceof NetworkError || (error instanceof ApiError && error.retryable)) {
      const retryAfterS = error instanceof ApiError ? error.retryAfterS : null;
      const code = error instanceof ApiError ? error.code : 'network';
      // The answer comes again whole (a replay is one piece): drop the partial one.
      await store.remove(assistant.id);
      await store.save({
        ...user,
        status: 'queued',
        error: { code, message: error.message, retryable: true },
        retryAt: this.port.clock.now() + retryDelayMs(user.attempts ?? 1, retryAfterS),
        retryAtFromServer: error instanceof ApiError,
      });
      return;
    }
    const failure =
      error instanceof ApiError
        ? { code: error.code, message: error.message, retryable: false }
        : { code: 'client_error', message: error instanceof Error ? error.message : String(error), retryable: false };
    if (assistant.content === '') await store.remove(assistant.id);
    else await store.save({ ...assistant, status: 'failed', error: failure });
    await store.save({
      ...user,
      status: 'failed',
      error: failure,
      keySettled: error instanceof ChatStreamError && error.settledUnderKey,
    });
  }
}
