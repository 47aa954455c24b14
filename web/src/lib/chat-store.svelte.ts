/**
 * The chat as the page sees it: the selected copro's conversation (runes), the model and routing
 * choices, the models list, and the outbox (outbox.ts) that sends queued messages.
 *
 * Every state change of a message is written to IndexedDB (db.ts) through one writer, so a
 * reload mid-send shows the message queued again and the outbox resends it under its key (the
 * gateway then replays the answer instead of running a second chat). `model` and `routing` are
 * kept in localStorage per copro. No user-facing text here: errors are codes the UI translates.
 *
 * `startChat()` (called once, by ChatPanel.svelte) loads the selected copro's history whenever it
 * or the signed-in user changes and runs the outbox when the page is signed in and online, and on
 * `online` events. A device may be shared: messages carry their user (`owner`, the token's `sub`),
 * and only the signed-in user's are shown and sent.
 */
import { untrack } from 'svelte';
import { app } from './app.svelte';
import {
  ROUTING_CHOICES,
  cancelChat,
  fetchModels as fetchModelsFromGateway,
  streamChat,
  type ModelOption,
  type RoutingChoice,
} from './chat-api';
import {
  deleteMessage,
  deleteMessages,
  getMessage,
  listMessages,
  messagesWithStatus,
  putMessage,
  type ChatMessageView,
  type StoredMessage,
} from './db';
import { ApiError, NetworkError } from './http';
import {
  Outbox,
  browserLock,
  queuedUserMessage,
  systemClock,
  type CancelChat,
  type Clock,
  type Lock,
  type OutboxStore,
  type SendChat,
} from './outbox';

export type { MessageStatus, ChatMessageView } from './db';
export type { ExecutionInfo, Usage, ModelOption, RoutingChoice } from './chat-api';
export { ROUTING_CHOICES } from './chat-api';

export const DEFAULT_MODEL = 'auto';
export const DEFAULT_ROUTING: RoutingChoice = 'copro_default';

const modelKey = (copro: string | null) => `koprogo.chat.model.${copro ?? ''}`;
const routingKey = (copro: string | null) => `koprogo.chat.routing.${copro ?? ''}`;

function isRoutingChoice(value: unknown): value is RoutingChoice {
  return typeof value === 'string' && (ROUTING_CHOICES as readonly string[]).includes(value);
}

/** What the store's view shows of a stored message (the outbox's bookkeeping stays out). */
function toView(message: StoredMessage): ChatMessageView {
  const view: ChatMessageView = {
    id: message.id,
    copro: message.copro,
    role: message.role,
    content: message.content,
    status: message.status,
    createdAt: message.createdAt,
    model: message.model,
    routing: message.routing,
  };
  if (message.replyTo !== undefined) view.replyTo = message.replyTo;
  if (message.answer !== undefined) view.answer = message.answer;
  if (message.error !== undefined) view.error = message.error;
  return view;
}

/** The code for an error the UI shows (it translates codes; no text here). */
function errorCode(error: unknown): string {
  if (error instanceof ApiError) return error.code;
  if (error instanceof NetworkError) return 'network';
  return 'client_error';
}

/**
 * Writes messages to IndexedDB one at a time, in the order they were saved, keeping only the
 * latest state of each message not yet written (a streamed answer is saved per piece).
 */
class MessageWriter {
  private latest = new Map<string, StoredMessage | null>();

  /** What is saved but not yet written, by id (null: removed). */
  get pending(): ReadonlyMap<string, StoredMessage | null> {
    return this.latest;
  }
  private flushing: Promise<void> | null = null;

  write(id: string, message: StoredMessage | null): Promise<void> {
    this.latest.delete(id); // re-inserted last: written after what was saved before it
    this.latest.set(id, message);
    return this.flush();
  }

  /** Resolves once everything saved so far is written (rejects with the first write's failure). */
  flush(): Promise<void> {
    if (!this.flushing) {
      if (this.latest.size === 0) return Promise.resolve();
      const flushing = this.drain().finally(() => {
        if (this.flushing === flushing) this.flushing = null;
      });
      this.flushing = flushing;
    }
    // A save made after the drain's last look is written by the next one.
    return this.flushing.then(() => (this.latest.size > 0 ? this.flush() : undefined));
  }

  private async drain(): Promise<void> {
    // Yield first: `flushing` is set before the loop can end (an await-free run would clear it too early).
    await Promise.resolve();
    let failure: unknown = null;
    while (this.latest.size > 0) {
      const [id, message] = this.latest.entries().next().value as [string, StoredMessage | null];
      this.latest.delete(id);
      try {
        if (message) await putMessage(message);
        else await deleteMessage(id);
      } catch (error) {
        failure ??= error;
      }
    }
    if (failure) throw failure;
  }
}

export interface ChatStoreOptions {
  send?: SendChat;
  /** How Stop cancels the chat at the gateway (default: `POST /mcp/v1/chat/cancel`). */
  cancel?: CancelChat;
  fetchModels?: () => Promise<ModelOption[]>;
  clock?: Clock;
  lock?: Lock;
  /** Signed in and online (default: `app.token` and `app.online`). */
  canSend?: () => boolean;
  /** The signed-in user (default: `app.claims.sub`): only their messages are shown and sent. */
  owner?: () => string | null;
  storage?: Pick<Storage, 'getItem' | 'setItem'> | null;
  /** The BroadcastChannel other tabs of the page hear this one's changes on (null: none). */
  channel?: string | null;
}

/** What a tab says on the channel: it wrote a copro's messages ('*': some copro), or asks the tab streaming that copro's answer to stop. */
interface ChangeNotice {
  copro: string;
  stop?: true;
}

const CHANNEL = 'koprogo-chat';
// How long a tab gathers other tabs' notices before reading the database again (a streamed answer sends many).
const REFRESH_DELAY_MS = 100;

export class ChatStore {
  #messages: ChatMessageView[] = $state.raw([]);
  #copro: string | null = $state(null);
  #model = $state(DEFAULT_MODEL);
  #routing: RoutingChoice = $state(DEFAULT_ROUTING);
  /** The catalogue from GET /mcp/v1/models (empty until refreshModels). */
  models: ModelOption[] = $state.raw([]);
  /** The code of the last refreshModels failure ('network', or the gateway's error code), or null. */
  modelsError: string | null = $state(null);
  /** The code of the last IndexedDB write failure (e.g. 'QuotaExceededError'), or null. */
  storageError: string | null = $state(null);

  readonly streaming = $derived(this.#messages.some((m) => m.role === 'assistant' && m.status === 'streaming'));
  readonly queued = $derived(this.#count('queued'));
  readonly sending = $derived(this.#count('sending'));
  readonly failed = $derived(this.#count('failed'));

  readonly #outbox: Outbox;
  readonly #writer = new MessageWriter();
  readonly #fetchModels: () => Promise<ModelOption[]>;
  readonly #clock: Clock;
  readonly #storage: Pick<Storage, 'getItem' | 'setItem'> | null;
  #loadSeq = 0;
  /** Saves made while a load reads the database, applied over what it read. */
  #duringLoad: Map<string, StoredMessage | null> | null = null;
  #lastCreatedAt = 0;
  readonly #channelName: string | null;
  readonly #owner: () => string | null;
  #channel: BroadcastChannel | null = null;
  #refreshTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(options: ChatStoreOptions = {}) {
    this.#fetchModels = options.fetchModels ?? fetchModelsFromGateway;
    this.#clock = options.clock ?? systemClock;
    this.#storage =
      options.storage !== undefined ? options.storage : typeof localStorage !== 'undefined' ? localStorage : null;
    this.#channelName = options.channel !== undefined ? options.channel : CHANNEL;
    this.#owner = options.owner ?? (() => app.claims?.sub ?? null);
    const store: OutboxStore = {
      save: (message) => this.#save(message),
      remove: (id) => this.#remove(id),
      get: async (id) => {
        await this.#writer.flush().catch(() => undefined);
        return getMessage(id);
      },
      list: async (copro) => {
        await this.#writer.flush().catch(() => undefined);
        return this.#mine(await listMessages(copro));
      },
      withStatus: async (statuses) => {
        await this.#writer.flush().catch(() => undefined);
        // Another user's queued messages (a shared device) wait for them to sign in again.
        return this.#mine(await messagesWithStatus(statuses));
      },
    };
    this.#outbox = new Outbox({
      send: options.send ?? streamChat,
      cancel: options.cancel ?? cancelChat,
      store,
      clock: this.#clock,
      lock: options.lock ?? browserLock(),
      canSend: options.canSend ?? (() => app.online && app.token !== null),
      // The costs panel listens for it (components/stats/StatsPanel.svelte).
      answered: (copro) => window.dispatchEvent(new CustomEvent('koprogo:answered', { detail: { copro } })),
    });
  }

  /** The selected copro's conversation, oldest first. */
  get messages(): ChatMessageView[] {
    return this.#messages;
  }

  /** The copro whose conversation `messages` is (the last `load`). */
  get copro(): string | null {
    return this.#copro;
  }

  /** The chosen model id or `auto` class; remembered per copro. */
  get model(): string {
    return this.#model;
  }

  set model(value: string) {
    this.#model = value;
    this.#remember(modelKey(this.#copro), value);
  }

  /** The routing preference; 'copro_default' sends none. Remembered per copro. */
  get routing(): RoutingChoice {
    return this.#routing;
  }

  set routing(value: RoutingChoice) {
    if (!isRoutingChoice(value)) throw new RangeError(`unknown routing choice ${String(value)}`);
    this.#routing = value;
    this.#remember(routingKey(this.#copro), value);
  }

  /** Show `copro`'s history from IndexedDB (and its model and routing choices), then run the outbox. */
  async load(copro: string | null): Promise<void> {
    const seq = ++this.#loadSeq;
    this.#listen();
    this.#copro = copro;
    const storedModel = this.#storage?.getItem(modelKey(copro));
    const storedRouting = this.#storage?.getItem(routingKey(copro));
    this.#model = storedModel || DEFAULT_MODEL;
    this.#routing = isRoutingChoice(storedRouting) ? storedRouting : DEFAULT_ROUTING;
    this.#messages = [];
    const duringLoad = new Map<string, StoredMessage | null>();
    this.#duringLoad = duringLoad;
    await this.#writer.flush().catch(() => undefined);
    const stored = this.#mine(await listMessages(copro));
    if (seq !== this.#loadSeq) return;
    this.#duringLoad = null;
    const byId = new Map(stored.map((m) => [m.id, m]));
    for (const [id, message] of duringLoad) {
      if (message) byId.set(id, message);
      else byId.delete(id);
    }
    this.#messages = [...byId.values()].sort((a, b) => a.createdAt - b.createdAt).map(toView);
    this.#lastCreatedAt = Math.max(this.#lastCreatedAt, ...stored.map((m) => m.createdAt));
    this.#kick();
  }

  /** GET /mcp/v1/models; on failure `modelsError` holds the code and `models` stays as it was. */
  async refreshModels(): Promise<void> {
    try {
      this.models = await this.#fetchModels();
      this.modelsError = null;
    } catch (error) {
      this.modelsError = errorCode(error);
    }
  }

  /** Store a user message (queued, with its idempotency key), then run the outbox. RangeError on blank text. */
  async send(text: string): Promise<void> {
    const content = text.trim();
    if (content === '') throw new RangeError('a chat message cannot be empty');
    // Strictly increasing: creation order is the sending order, even within one millisecond.
    const createdAt = Math.max(this.#clock.now(), Math.floor(this.#lastCreatedAt) + 1);
    this.#lastCreatedAt = createdAt;
    const owner = this.#owner() ?? undefined;
    await this.#save(queuedUserMessage(content, this.#copro, this.#model, this.#routing, createdAt, owner));
    this.#kick();
  }

  /** Abort the answer being streamed (by this tab, or else by another) and cancel it at the gateway: it is kept as 'stopped', its question is not sent again. */
  stop(): void {
    if (this.#outbox.stop()) return;
    if (this.streaming) this.#post({ copro: this.#copro ?? '', stop: true });
  }

  /** Queue a failed user message again and run the outbox (resolves once queued). Its key is kept, unless the gateway settled that key with the error. */
  async retry(messageId: string): Promise<void> {
    await this.#outbox.retry(messageId);
    this.#kick();
  }

  /** Forget this copro's history (and its queued messages) on this device. */
  async clear(): Promise<void> {
    const copro = this.#copro;
    await this.#outbox.pause(copro);
    try {
      await this.#writer.flush().catch(() => undefined);
      await deleteMessages(copro, this.#owner() ?? undefined);
      if (this.#copro === copro) this.#messages = [];
    } finally {
      this.#outbox.resume();
    }
    this.#kick();
  }

  /** Run the outbox now; `online`: the network just came back (network backoffs are cut short). */
  kick(options: { online?: boolean } = {}): Promise<void> {
    return this.#outbox.run(options).catch((error: unknown) => {
      this.storageError = error instanceof Error ? error.name : errorCode(error);
    });
  }

  /** Resolves when the outbox has nothing it can send now (for tests and the page's own waits). */
  async whenIdle(): Promise<void> {
    await this.kick();
    await this.#writer.flush().catch(() => undefined);
  }

  #kick(): void {
    void this.kick();
  }

  /** The signed-in user's messages (those written before anyone signed in too). */
  #mine(messages: StoredMessage[]): StoredMessage[] {
    const owner = this.#owner();
    return messages.filter((m) => m.owner === undefined || m.owner === owner);
  }

  #count(status: ChatMessageView['status']): number {
    return this.#messages.filter((m) => m.role === 'user' && m.status === status).length;
  }

  #remember(key: string, value: string): void {
    try {
      this.#storage?.setItem(key, value);
    } catch {
      // Private mode or quota: the choice holds for this page only.
    }
  }

  #save(message: StoredMessage): Promise<void> {
    this.#show(message.id, message);
    return this.#written(this.#writer.write(message.id, message), message.copro);
  }

  #remove(id: string): Promise<void> {
    const copro = this.#messages.some((m) => m.id === id) ? this.#copro : undefined;
    this.#show(id, null);
    return this.#written(this.#writer.write(id, null), copro);
  }

  async #written(writing: Promise<void>, copro: string | null | undefined): Promise<void> {
    try {
      await writing;
    } catch (error) {
      this.storageError = error instanceof Error ? error.name : 'storage_error';
      throw error;
    } finally {
      // Unknown copro (a message this tab did not show): every tab showing any copro looks again.
      this.#announce(copro === undefined ? '*' : (copro ?? ''));
    }
  }

  /** Hear other tabs' changes (once, in the browser): the shown copro's view is read again. */
  #listen(): void {
    if (this.#channel || this.#channelName === null || typeof BroadcastChannel === 'undefined') return;
    this.#channel = new BroadcastChannel(this.#channelName);
    this.#channel.onmessage = (event: MessageEvent<ChangeNotice>) => {
      const copro = event.data?.copro;
      if (event.data?.stop) {
        if (this.#outbox.sendingCopro !== undefined && (this.#outbox.sendingCopro ?? '') === copro) this.#outbox.stop();
        return;
      }
      if (copro !== '*' && copro !== (this.#copro ?? '')) return;
      this.#refreshTimer ??= setTimeout(() => {
        this.#refreshTimer = null;
        void this.#refresh().catch(() => undefined);
      }, REFRESH_DELAY_MS);
    };
  }

  #announce(copro: string): void {
    this.#post({ copro });
  }

  #post(notice: ChangeNotice): void {
    try {
      this.#channel?.postMessage(notice);
    } catch {
      // The channel was closed: nobody listens any more.
    }
  }

  /** Read the shown copro's messages again (another tab changed them), this tab's unwritten saves on top. */
  async #refresh(): Promise<void> {
    const seq = this.#loadSeq;
    const copro = this.#copro;
    const stored = this.#mine(await listMessages(copro));
    if (seq !== this.#loadSeq || this.#duringLoad) return;
    const byId = new Map(stored.map((m) => [m.id, m]));
    for (const [id, message] of this.#writer.pending) {
      if (message === null) byId.delete(id);
      else if (message.copro === copro) byId.set(id, message);
    }
    this.#messages = [...byId.values()].sort((a, b) => a.createdAt - b.createdAt).map(toView);
  }

  /** Stop hearing other tabs (tests; a page never needs it). */
  close(): void {
    if (this.#refreshTimer) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    this.#channel?.close();
    this.#channel = null;
  }

  #show(id: string, message: StoredMessage | null): void {
    if (message && (message.copro !== this.#copro || this.#mine([message]).length === 0)) return;
    this.#duringLoad?.set(id, message);
    const without = this.#messages.filter((m) => m.id !== id);
    if (!message) {
      if (without.length !== this.#messages.length) this.#messages = without;
      return;
    }
    const view = toView(message);
    const at = without.findIndex((m) => m.createdAt > view.createdAt);
    this.#messages = at < 0 ? [...without, view] : [...without.slice(0, at), view, ...without.slice(at)];
  }
}

/** The page's chat. */
export const chat = new ChatStore();

/**
 * Start the chat (App.svelte calls it once, in onMount; returns the stop function): load the
 * selected copro's history whenever `app.copro` changes, run the outbox whenever the page is
 * signed in and online, and on the browser's `online` event (backoffs cut short).
 */
export function startChat(store: ChatStore = chat): () => void {
  const online = () => void store.kick({ online: true });
  window.addEventListener('online', online);
  const stopEffects = $effect.root(() => {
    $effect(() => {
      const copro = app.copro;
      void app.claims?.sub; // another user signed in: their own history
      untrack(() => void store.load(copro));
    });
    $effect(() => {
      if (app.online && app.token) untrack(() => void store.kick());
    });
  });
  return () => {
    window.removeEventListener('online', online);
    stopEffects();
  };
}
