import { cleanup, fireEvent, render } from '@testing-library/svelte';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { app } from '../../lib/app.svelte';
import type { ChatMessageView, ModelOption } from '../../lib/chat-store.svelte';

// The store is B's; here only what MessageItem reads from it (the models, retry).
const fake = vi.hoisted(() => ({
  chat: { models: [] as ModelOption[], retry: vi.fn(async (_id: string) => {}) },
}));
vi.mock('../../lib/chat-store.svelte', () => ({ chat: fake.chat }));

import MessageItem from './MessageItem.svelte';

const GPT_4O_MINI: ModelOption = {
  id: 'gpt-4o-mini',
  name: 'GPT-4o Mini',
  provider: 'openai',
  context_length: 128000,
  is_available: true,
  edge_compatible: false,
  supports: [],
};

function message(overrides: Partial<ChatMessageView>): ChatMessageView {
  return {
    id: 'm1',
    copro: 'c1',
    role: 'assistant',
    content: '',
    status: 'done',
    createdAt: Date.UTC(2026, 11, 2, 9, 30),
    model: 'auto',
    routing: 'copro_default',
    ...overrides,
  };
}

function answer(info: Partial<NonNullable<ChatMessageView['answer']>['execution_info']>, model = 'smollm2-135m-instruct-q4') {
  return {
    id: 'chat-1',
    model,
    finish_reason: 'stop',
    usage: { prompt_tokens: 1234, completion_tokens: 48, total_tokens: 1282 },
    execution_info: {
      execution_type: 'edge' as const,
      node_id: 'pi-salle-commune',
      latency_ms: 850,
      co2_grams: 0,
      co2_saved_grams: 0.0123,
      routing: null,
      ...info,
    },
  };
}

/** Text with no-break spaces (Intl's and the French catalogue's) turned into plain ones. */
function text(element: Element): string {
  return (element.textContent ?? '').replace(/[\u00a0\u202f]/g, ' ').replace(/\s+/g, ' ');
}

beforeEach(() => {
  app.locale = 'fr';
  fake.chat.models = [];
  fake.chat.retry.mockClear();
});
afterEach(() => cleanup());

describe('MessageItem', () => {
  it('renders an answer as markdown with what is dangerous removed', () => {
    const { getByTestId } = render(MessageItem, {
      message: message({
        content: '**Charges** <img src="x" onerror="alert(1)"><script>alert(2)</script>\n\n```\nconst a = 1;\n```',
      }),
    });
    const bubble = getByTestId('message');
    expect(bubble.querySelector('strong')?.textContent).toBe('Charges');
    expect(bubble.querySelector('pre code')?.textContent).toContain('const a = 1;');
    expect(bubble.querySelector('script')).toBeNull();
    expect(bubble.innerHTML).not.toContain('onerror');
  });

  it('shows what the user typed as text, never as HTML', () => {
    const { getByTestId } = render(MessageItem, {
      message: message({ role: 'user', content: '<b>gras</b> **pas du markdown**' }),
    });
    const bubble = getByTestId('message');
    expect(bubble.getAttribute('data-role')).toBe('user');
    expect(bubble.querySelector('b')).toBeNull();
    expect(bubble.querySelector('strong')).toBeNull();
    expect(text(bubble)).toContain('<b>gras</b> **pas du markdown**');
  });

  it('says where an edge answer ran, its latency, tokens and grams', () => {
    const { getByTestId } = render(MessageItem, {
      message: message({ content: 'Bonjour', answer: answer({}) }),
    });
    const meta = text(getByTestId('message-meta'));
    expect(meta).toContain('🍓');
    expect(meta).toContain('Exécuté en local sur le nœud pi-salle-commune.');
    expect(meta).toContain('850 ms');
    expect(meta).toContain('1 234 → 48 tokens');
    expect(meta).toContain('0 g CO₂');
    expect(meta).toContain('0,012 g évités');
  });

  it('names the cloud provider of the model that answered, in seconds past one second', () => {
    fake.chat.models = [GPT_4O_MINI];
    app.locale = 'en';
    const { getByTestId } = render(MessageItem, {
      message: message({
        content: 'Hello',
        answer: answer({ execution_type: 'cloud', node_id: null, latency_ms: 1234, co2_grams: 0.42, co2_saved_grams: 0 }, 'gpt-4o-mini'),
      }),
    });
    const meta = text(getByTestId('message-meta'));
    expect(meta).toContain('☁️');
    expect(meta).toContain('Ran in the cloud at OpenAI.');
    expect(meta).toContain('1.2 s');
    expect(meta).toContain('0.42 g CO₂');
  });

  it('falls back to the deployment the router named when the model is not in the list', () => {
    const { getByTestId } = render(MessageItem, {
      message: message({
        content: 'Bonjour',
        answer: answer(
          {
            execution_type: 'cloud',
            node_id: null,
            routing: { policy: 'fastest', reason: 'fastest: gpt-x on cloud azure-eu (~0.0100 g, ~900 ms)', attempts: 1 },
          },
          'gpt-x',
        ),
      }),
    });
    expect(text(getByTestId('message-meta'))).toContain('Exécuté dans le cloud chez azure-eu.');
  });

  it('shows no meta line while the answer streams, and marks it busy', () => {
    const { getByTestId, queryByTestId } = render(MessageItem, {
      message: message({ content: 'Bonj', status: 'streaming' }),
    });
    expect(getByTestId('message').getAttribute('aria-busy')).toBe('true');
    expect(queryByTestId('message-meta')).toBeNull();
    expect(queryByTestId('copy-button')).toBeNull();
  });

  it('explains a policy refusal in words and retries the failed message', async () => {
    const { getByTestId } = render(MessageItem, {
      message: message({
        id: 'u7',
        role: 'user',
        content: 'Question',
        status: 'failed',
        error: {
          code: 'routing_policy_violation',
          message: "this copro's routing policy is edge_only: its data never leaves its edge nodes, so a request cannot ask for 'fastest'",
          retryable: false,
        },
      }),
    });
    const bubble = getByTestId('message');
    expect(bubble.getAttribute('data-status')).toBe('failed');
    expect(text(bubble)).toContain('La politique de la copropriété interdit cet acheminement');
    await fireEvent.click(getByTestId('retry-button'));
    expect(fake.chat.retry).toHaveBeenCalledWith('u7');
  });

  it("shows the gateway's own message for a code it does not know", () => {
    const { getByTestId, queryByTestId } = render(MessageItem, {
      message: message({
        role: 'assistant',
        content: '',
        status: 'failed',
        error: { code: 'brand_new_code', message: 'something new went wrong', retryable: false },
      }),
    });
    expect(text(getByTestId('message'))).toContain('La passerelle a refusé la demande : something new went wrong');
    expect(queryByTestId('retry-button')).toBeNull();
  });

  it('copies the answer and says so', async () => {
    const writeText = vi.fn(async (_text: string) => {});
    Object.defineProperty(navigator, 'clipboard', { value: { writeText }, configurable: true });
    const { getByTestId } = render(MessageItem, { message: message({ content: '# Titre' }) });
    await fireEvent.click(getByTestId('copy-button'));
    expect(writeText).toHaveBeenCalledWith('# Titre');
    await vi.waitFor(() => expect(text(getByTestId('message'))).toContain('Copié'));
  });
});
