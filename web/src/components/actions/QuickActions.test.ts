import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { app } from '../../lib/app.svelte';
import { resetActions } from './actions-state.svelte';
import QuickActions from './QuickActions.svelte';

const TASK_ID = '0c6f7a52-3b0e-4a49-a2f4-5d1c2e9b8f10';

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
}

function task(status: string, extra: Record<string, unknown> = {}) {
  return {
    id: TASK_ID,
    task_type: 'x',
    status,
    result: null,
    error: null,
    created_at: '2026-12-02T09:00:00Z',
    updated_at: '2026-12-02T09:00:01Z',
    copro_id: 'les-tilleuls',
    attempts: [{ attempt: 1, node_id: 'pi-tilleuls-1', started_at: null, ended_at: null, outcome: status === 'completed' ? 'completed' : null }],
    co2_grams: 0.12,
    verification: null,
    execution_type: 'grid',
    ...extra,
  };
}

const ACCEPTED = { id: TASK_ID, status: 'pending', result: null, task_type: 'x', copro_id: 'les-tilleuls', created_at: '2026-12-02T09:00:00Z' };

/** The gateway at the network boundary: answers in order, records requests. */
function gateway(...answers: (Response | Error)[]) {
  const calls: { url: string; init: RequestInit }[] = [];
  vi.stubGlobal(
    'fetch',
    vi.fn(async (url: string, init: RequestInit) => {
      calls.push({ url, init });
      const answer = answers.shift();
      if (!answer) throw new Error(`unexpected ${init.method ?? 'GET'} ${url}`);
      if (answer instanceof Error) throw answer;
      return answer;
    }),
  );
  return calls;
}

function chooseFile(input: HTMLElement, file: File): Promise<boolean> {
  Object.defineProperty(input, 'files', { value: [file], configurable: true });
  return fireEvent.change(input);
}

// jsdom lacks what every browser the page targets has: Blob.text() and ResizeObserver.
if (!('text' in Blob.prototype)) {
  Object.defineProperty(Blob.prototype, 'text', {
    value(this: Blob) {
      return new Promise<string>((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result as string);
        reader.onerror = () => reject(reader.error);
        reader.readAsText(this);
      });
    },
  });
}

beforeEach(() => {
  vi.stubGlobal(
    'ResizeObserver',
    class {
      observe() {}
      unobserve() {}
      disconnect() {}
    },
  );
  app.token = 'token';
  app.copro = 'les-tilleuls';
  app.locale = 'fr';
  app.online = true;
  vi.stubGlobal('URL', Object.assign(URL, { createObjectURL: vi.fn(() => 'blob:preview'), revokeObjectURL: vi.fn() }));
});

afterEach(() => {
  cleanup();
  resetActions();
  vi.unstubAllGlobals();
});

describe('QuickActions', () => {
  it('shows the four actions and opens one panel at a time, focus moved into it and back', async () => {
    render(QuickActions);
    expect(['action-summarize', 'action-translate', 'action-ocr', 'action-forecast'].map((id) => screen.getByTestId(id).textContent?.trim())).toEqual([
      'Résumer PV',
      'Traduire',
      'OCR facture',
      'Calculer charges',
    ]);
    await fireEvent.click(screen.getByTestId('action-summarize'));
    const heading = screen.getByRole('heading', { name: "Résumer un procès-verbal d'assemblée générale" });
    expect(document.activeElement).toBe(heading);
    expect(screen.getByTestId('action-summarize').getAttribute('aria-expanded')).toBe('true');
    await fireEvent.click(screen.getByTestId('action-ocr'));
    expect(screen.queryByRole('heading', { name: "Résumer un procès-verbal d'assemblée générale" })).toBeNull();
    expect(screen.getAllByTestId('action-file-input')).toHaveLength(1);
    expect(screen.getByTestId('action-file-input').getAttribute('accept')).toBe('application/pdf,image/*');
    await fireEvent.click(screen.getByRole('button', { name: 'Fermer' }));
    expect(screen.queryByTestId('action-file-input')).toBeNull();
    expect(document.activeElement).toBe(screen.getByTestId('action-ocr'));
  });

  it('summarises pasted minutes: submits with a key, follows the task, shows the result', async () => {
    const calls = gateway(
      json(202, ACCEPTED, { Location: `/mcp/v1/tasks/${TASK_ID}` }),
      json(200, task('running')),
      json(
        200,
        task('completed', {
          result: {
            language: 'fr',
            meeting_date: '2025-03-18',
            summary: "L'assemblée approuve le remplacement de la chaudière pour 18 450 € HTVA.",
            summary_source: 'model',
            decisions: [
              { number: '3', title: 'Remplacement de la chaudière collective', vote: 'approved', majority: 'two_thirds', votes: { for: 5210, against: 1160, abstain: 450 } },
            ],
            no_vote: ['Installation de bornes de recharge'],
          },
          verification: { policy: 'quorum', quorum: 2, max_replicas: 3, replicas: [], agreement: 2, outcome: 'accepted' },
        }),
      ),
    );
    render(QuickActions);
    await fireEvent.click(screen.getByTestId('action-summarize'));
    await fireEvent.input(screen.getByTestId('action-text-input'), { target: { value: 'PROCÈS-VERBAL…' } });
    await fireEvent.click(screen.getByTestId('action-submit'));
    const result = await screen.findByTestId('action-result', {}, { timeout: 4000 });
    expect(result.textContent).toContain('18 450 € HTVA');
    expect(result.textContent).toContain('majorité des deux tiers');
    expect(result.textContent).toContain('pi-tilleuls-1');
    expect(result.textContent).toContain('Vérifié : 2 nœuds');
    expect(screen.getByTestId('action-progress').getAttribute('role')).toBe('status');
    expect(screen.getByTestId('action-progress').textContent).toContain('Terminé');
    const post = calls[0];
    expect(post.url).toBe('/mcp/v1/execute');
    expect(new Headers(post.init.headers).get('Idempotency-Key')).toMatch(/^[0-9a-f-]{36}$/);
    expect(JSON.parse(post.init.body as string)).toEqual({
      task_type: 'summarize_meeting',
      copro_id: 'les-tilleuls',
      input_data: { text: 'PROCÈS-VERBAL…' },
    });
    expect(calls.slice(1).map((c) => c.url)).toEqual([`/mcp/v1/tasks/${TASK_ID}`, `/mcp/v1/tasks/${TASK_ID}`]);
  });

  it('says a task needs a connection when offline, and sends nothing', async () => {
    const calls = gateway();
    app.online = false;
    render(QuickActions);
    await fireEvent.click(screen.getByTestId('action-translate'));
    await fireEvent.input(screen.getByTestId('action-text-input'), { target: { value: 'Bonjour' } });
    await fireEvent.click(screen.getByTestId('action-submit'));
    expect((await screen.findByRole('alert')).textContent).toContain('les tâches ne sont pas mises en file hors ligne');
    expect(calls).toHaveLength(0);
  });

  it('retries a submission that did not get through with the same idempotency key', async () => {
    const calls = gateway(new TypeError('Failed to fetch'), json(202, ACCEPTED), json(200, task('completed', { result: { text: 'Goedendag', source_language: 'fr', target_language: 'nl' } })));
    render(QuickActions);
    await fireEvent.click(screen.getByTestId('action-translate'));
    await fireEvent.input(screen.getByTestId('action-text-input'), { target: { value: 'Bonjour' } });
    await fireEvent.click(screen.getByTestId('action-submit'));
    await fireEvent.click(await screen.findByRole('button', { name: 'Réessayer' }));
    expect((await screen.findByTestId('action-result')).textContent).toContain('Goedendag');
    const keys = calls.slice(0, 2).map((c) => new Headers(c.init.headers).get('Idempotency-Key'));
    expect(keys[0]).toBeTruthy();
    expect(keys[1]).toBe(keys[0]);
    expect(JSON.parse(calls[1].init.body as string).input_data).toEqual({ text: 'Bonjour', target_language: 'nl' });
  });

  it('shows the reason of a failed task', async () => {
    gateway(json(202, ACCEPTED), json(200, task('failed', { error: { error: 'input_error', message: 'the document is not a readable PDF' } })));
    render(QuickActions);
    await fireEvent.click(screen.getByTestId('action-summarize'));
    await fireEvent.input(screen.getByTestId('action-text-input'), { target: { value: 'PV' } });
    await fireEvent.click(screen.getByTestId('action-submit'));
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('Le document n’a pas pu être traité.');
    expect(alert.textContent).toContain('the document is not a readable PDF');
    expect(screen.getByTestId('action-progress').dataset.phase).toBe('failed');
  });

  it('reads an invoice: multipart upload, editable fields with confidence, total up front', async () => {
    const calls = gateway(
      json(202, ACCEPTED),
      json(
        200,
        task('completed', {
          result: {
            fields: {
              supplier: { value: 'Chauffage Dubois SPRL', confidence: 0.9, source: 'pdf_text' },
              total_incl_vat: { value: 1512.5, confidence: 0.95, source: 'pdf_text' },
              iban: { value: 'BE71 0961 2345 6769', confidence: 0.4, source: 'ocr' },
            },
            missing: ['due_date'],
            checks: { iban_checksum: 'ok', totals: 'incomplete', vat_rate: 'incomplete' },
            text_source: 'pdf_text',
            pages: 1,
          },
        }),
      ),
    );
    render(QuickActions);
    await fireEvent.click(screen.getByTestId('action-ocr'));
    await chooseFile(screen.getByTestId('action-file-input'), new File(['%PDF-1.7'], 'facture.pdf', { type: 'application/pdf' }));
    expect(screen.getByText(/facture\.pdf/)).toBeTruthy();
    await fireEvent.click(screen.getByTestId('action-submit'));
    const table = await screen.findByTestId('ocr-fields');
    const form = calls[0].init.body as FormData;
    expect(form.get('task_type')).toBe('ocr_invoice');
    expect((form.get('document') as File).name).toBe('facture.pdf');
    const supplier = table.querySelector('tr[data-field="supplier"]')!;
    expect((supplier.querySelector('input') as HTMLInputElement).value).toBe('Chauffage Dubois SPRL');
    expect(supplier.textContent).toContain('90 % (élevée)');
    expect(table.querySelector('tr[data-field="iban"]')!.getAttribute('data-level')).toBe('low');
    expect(table.querySelector('tr[data-field="due_date"]')!.textContent).toContain('non trouvé');
    expect(screen.getByLabelText('Total TVAC')).toBeTruthy();
    expect(screen.getByTestId('action-result').textContent).toMatch(/1[\s\u202f.]?512,50/);
    await fireEvent.input(screen.getByLabelText('Total TVAC'), { target: { value: '1 600,00' } });
    expect(screen.getByTestId('action-result').textContent).toMatch(/1[\s\u202f.]?600,00/);
  });

  it('forecasts the charges from a CSV and draws them', async () => {
    const point = (month: string, mean: number) => ({ month, mean, lower_80: mean - 100, upper_80: mean + 100, lower_95: mean - 200, upper_95: mean + 200 });
    const calls = gateway(
      json(202, ACCEPTED),
      json(
        200,
        task('completed', {
          result: {
            horizon_months: 2,
            history_months: 2,
            first_forecast_month: '2022-03',
            method: 'ETS',
            categories: { chauffage: { model: 'ETS(A,N,N)', seasonal: false, forecast: [point('2022-03', 4000), point('2022-04', 3000)] } },
            total: [point('2022-03', 4300), point('2022-04', 3300)],
          },
        }),
      ),
    );
    render(QuickActions);
    await fireEvent.click(screen.getByTestId('action-forecast'));
    const csv = 'month,category,amount_eur\n2022-01,chauffage,4782.51\n2022-01,nettoyage,567.49\n2022-02,chauffage,4353.82\n2022-02,nettoyage,549.77\n';
    await chooseFile(screen.getByTestId('action-file-input'), new File([csv], 'charges.csv', { type: 'text/csv' }));
    await fireEvent.click(screen.getByTestId('action-submit'));
    const chart = await screen.findByTestId('forecast-chart');
    expect(JSON.parse((calls[0].init.body as FormData).get('input_data') as string)).toEqual({ horizon_months: 12 });
    expect(chart.querySelector('title')!.textContent).toContain('Total de l’immeuble');
    expect(screen.getByTestId('action-result').textContent).toContain('Total prévu sur 2 mois');
    // The past is read back from the CSV (asynchronously): the history line, then the hidden
    // table with the past and the forecast.
    await waitFor(() => {
      const paths = [...chart.querySelectorAll('path')].map((p) => p.getAttribute('d') ?? '');
      expect(paths.filter((d) => d.startsWith('M'))).toHaveLength(4);
    });
    const rows = [...document.querySelectorAll('.sr-only table tbody tr')].map((r) => r.querySelector('th')!.textContent);
    expect(rows).toEqual(['janvier 2022', 'février 2022', 'mars 2022', 'avril 2022']);
    expect(chart.querySelector('desc')!.textContent).toContain('Historique de janvier 2022 à février 2022');
  });
});
