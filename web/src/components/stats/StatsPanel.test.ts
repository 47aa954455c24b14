// The costs panel rendered in jsdom, fetch stubbed at the network boundary.
import { cleanup, render, screen, waitFor } from '@testing-library/svelte';
import { flushSync } from 'svelte';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { app } from '../../lib/app.svelte';
import StatsPanel from './StatsPanel.svelte';

const TOTALS = {
  total_requests: 1284,
  total_tokens: 412345,
  total_co2_grams: 12.345,
  co2_saved_grams: 48.2,
  edge_requests: 1002,
  cloud_requests: 270,
  grid_requests: 12,
  avg_latency_ms: 842.3,
  models_used: ['smollm2-135m-instruct'],
  grid_token_revenue: 3.75,
};

let requests: string[] = [];
/** Answers given to /mcp/v1/stats so far: each one counts one more request, so a reload shows. */
let statsAnswers = 0;
let testNumber = 0;
let answer: (url: string) => Response;

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

const normal = (url: string) =>
  url.startsWith('/mcp/v1/stats/series')
    ? json(200, { bucket: 'day', points: [{ start: new Date().toISOString().slice(0, 10) + 'T00:00:00Z', requests: 3, total_tokens: 90, co2_grams: 0.5, co2_saved_grams: 2 }] })
    : json(200, { ...TOTALS, total_requests: TOTALS.total_requests + statsAnswers++ });

const text = (testId: string) => (screen.getByTestId(testId).textContent ?? '').replace(/\s+/g, ' ').trim();
const stat = (name: string) => (document.querySelector(`[data-stat="${name}"]`)?.textContent ?? '').replace(/\s+/g, '');

beforeEach(() => {
  requests = [];
  statsAnswers = 0;
  answer = normal;
  vi.stubGlobal(
    'ResizeObserver',
    class {
      observe() {}
      unobserve() {}
      disconnect() {}
    },
  );
  vi.stubGlobal(
    'fetch',
    vi.fn(async (input: RequestInfo | URL) => {
      requests.push(String(input));
      return answer(String(input));
    }),
  );
  app.locale = 'en';
  app.online = true;
  app.token = 'tok';
  // A user of its own per test: the panel's in-memory figures are kept per user.
  app.claims = { sub: `alice-${++testNumber}`, copros: ['c1', 'c2'], scope: 'mcp:read', exp: 9e9 };
  app.copro = 'c1';
});

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
  app.token = null;
  app.claims = null;
  app.copro = null;
  app.locale = 'fr';
});

describe('StatsPanel', () => {
  it("shows the copro's totals, the split by where requests ran, and the chart", async () => {
    render(StatsPanel);
    await screen.findByTestId('stats-totals');
    expect(requests).toEqual([
      '/mcp/v1/stats?context=copro%3Ac1',
      expect.stringMatching(/^\/mcp\/v1\/stats\/series\?context=copro%3Ac1&bucket=day&from=/),
    ]);
    expect(stat('total_requests')).toBe('1,284');
    expect(text('stats-totals')).toContain('1,002 local (🍓 edge), 270 in the cloud (☁️), 12 on the grid');
    expect(stat('total_co2_grams')).toBe('12.3g');
    expect(screen.getByTestId('co2-chart').querySelector('title')?.textContent).toBe(
      'CO₂ emitted and saved per day over the last 30 days',
    );
    // The hidden table has the 30 days; today's row carries the series' figures.
    const rows = document.querySelectorAll('table tbody tr');
    expect(rows).toHaveLength(30);
    expect(rows[29].textContent?.replace(/\s+/g, '')).toContain('0.500g2g3');
  });

  it("reloads after an answer ('koprogo:answered') and when the copro changes", async () => {
    render(StatsPanel);
    await screen.findByTestId('stats-totals');
    window.dispatchEvent(new CustomEvent('koprogo:answered'));
    await waitFor(() => expect(stat('total_requests')).toBe('1,285'));

    app.copro = 'c2';
    flushSync();
    await waitFor(() => expect(requests.filter((url) => url.includes('copro%3Ac2'))).toHaveLength(2));
  });

  it('offline, keeps the last figures with their time and asks nothing', async () => {
    render(StatsPanel);
    await screen.findByTestId('stats-totals');
    const asked = requests.length;

    app.online = false;
    flushSync();

    expect(text('stats-as-of')).toMatch(/^Offline: figures as of /);
    expect(stat('total_requests')).toBe('1,284');
    expect(screen.getByTestId('stats-refresh')).toHaveProperty('disabled', true);
    window.dispatchEvent(new CustomEvent('koprogo:answered'));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(requests.length).toBe(asked);
  });

  it('says why a refresh failed and keeps the figures it had', async () => {
    render(StatsPanel);
    await screen.findByTestId('stats-totals');
    answer = () => json(503, { error: 'stats_unavailable', message: 'PostgreSQL cannot answer' });

    screen.getByTestId('stats-refresh').click();

    await waitFor(() => expect(text('stats-error')).toBe('The statistics are unavailable for the moment. Try again shortly.'));
    expect(stat('total_requests')).toBe('1,284');
  });

  it('shows the totals without a chart when the per-day series cannot be read', async () => {
    answer = (url) => (url.includes('/series') ? json(404, { detail: 'Not Found' }) : normal(url));
    render(StatsPanel);
    await screen.findByTestId('stats-totals');
    expect(screen.queryByTestId('co2-chart')).toBeNull();
    expect(text('co2-chart-unavailable')).toBe('The per-day history is not available.');
  });
});
