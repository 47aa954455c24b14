import { cleanup, render } from '@testing-library/svelte';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { app } from '../../lib/app.svelte';
import type { ModelOption } from '../../lib/chat-store.svelte';

// What the pickers and the outbox line read from B's store.
const fake = vi.hoisted(() => ({
  chat: {
    models: [] as ModelOption[],
    modelsError: null as string | null,
    model: 'auto',
    routing: 'copro_default',
    queued: 0,
    sending: 0,
    failed: 0,
  },
}));
vi.mock('../../lib/chat-store.svelte', () => ({ chat: fake.chat }));

import ModelPicker from './ModelPicker.svelte';
import OutboxStatus from './OutboxStatus.svelte';

function model(id: string, provider: string, edge: boolean, available = true): ModelOption {
  return { id, name: `name of ${id}`, provider, context_length: 8192, is_available: available, edge_compatible: edge, supports: [] };
}

beforeEach(() => {
  app.locale = 'fr';
  app.online = true;
  Object.assign(fake.chat, { models: [], modelsError: null, model: 'auto', queued: 0, sending: 0, failed: 0 });
});
afterEach(() => cleanup());

describe('ModelPicker', () => {
  it('groups the auto classes, edge and cloud models, unavailable ones disabled', () => {
    fake.chat.models = [
      model('llama3:8b-instruct-q4', 'local', true, false),
      model('gpt-4o-mini', 'openai', false),
      model('auto', 'auto', true),
      model('auto:large', 'auto', true),
      model('smollm2', 'local', true),
    ];
    const { getByTestId } = render(ModelPicker);
    const select = getByTestId('model-picker') as HTMLSelectElement;
    const groups = [...select.querySelectorAll('optgroup')].map((g) => [
      g.label,
      [...g.querySelectorAll('option')].map((o) => `${o.value}${o.disabled ? ' (disabled)' : ''}`),
    ]);
    expect(groups).toEqual([
      ['Automatique', ['auto', 'auto:large']],
      ['🍓 Local (edge)', ['llama3:8b-instruct-q4 (disabled)', 'smollm2']],
      ['☁️ Cloud', ['gpt-4o-mini']],
    ]);
    expect(select.querySelector('option[value="auto:large"]')?.textContent?.trim()).toBe('Automatique, grand modèle');
    expect(select.querySelector('option[value="llama3:8b-instruct-q4"]')?.textContent).toContain('(indisponible)');
    expect(select.labels?.[0]?.textContent).toBe('Modèle');
  });

  it('keeps the chosen model selectable before the list arrives, and says why the list failed', () => {
    fake.chat.model = 'auto:small';
    fake.chat.modelsError = 'network';
    const { getByTestId, getByRole } = render(ModelPicker);
    const select = getByTestId('model-picker') as HTMLSelectElement;
    expect(select.value).toBe('auto:small');
    expect(getByRole('status').textContent).toContain('vérifiez votre connexion');
  });
});

describe('OutboxStatus', () => {
  it('is absent when nothing waits', () => {
    const { queryByTestId } = render(OutboxStatus);
    expect(queryByTestId('outbox-status')).toBeNull();
  });

  it('says what waits for the connection, what is sending and what failed', () => {
    Object.assign(fake.chat, { queued: 2, sending: 1, failed: 1 });
    app.online = false;
    const { getByTestId } = render(OutboxStatus);
    const text = getByTestId('outbox-status').textContent ?? '';
    expect(text).toContain('2 messages en attente — envoi dès le retour de la connexion');
    expect(text).toContain('Envoi…');
    expect(text).toContain('1 échec');
  });

  it('drops the connection part when online', () => {
    fake.chat.queued = 1;
    const { getByTestId } = render(OutboxStatus);
    expect(getByTestId('outbox-status').textContent).toContain('1 message en attente d’envoi');
    expect(getByTestId('outbox-status').textContent).not.toContain('connexion');
  });
});
