import { afterEach, describe, expect, it, vi } from 'vitest';
import { app } from './app.svelte';
import { fetchDailySeries, fetchStats, parseSeries, parseStats, StatsShapeError } from './stats-api';

const TOTALS = {
  total_requests: 12,
  total_tokens: 3400,
  total_co2_grams: 0.42,
  co2_saved_grams: 1.5,
  edge_requests: 7,
  cloud_requests: 4,
  grid_requests: 1,
  avg_latency_ms: 812.5,
  models_used: ['smollm2-135m', 'claude-haiku'],
  grid_token_revenue: 0.24,
};

afterEach(() => {
  vi.unstubAllGlobals();
  app.token = null;
});

describe('parseStats', () => {
  it('takes the gateway body as it is', () => {
    expect(parseStats(TOTALS)).toEqual(TOTALS);
  });

  it.each([
    ['a list', []],
    ['a missing total', { ...TOTALS, total_tokens: undefined }],
    ['a text number', { ...TOTALS, total_co2_grams: '0.4' }],
    ['models not a list', { ...TOTALS, models_used: 'smollm2' }],
  ])('refuses %s', (_name, body) => {
    expect(() => parseStats(body)).toThrow(StatsShapeError);
  });
});

describe('parseSeries', () => {
  const point = { start: '2026-12-01T00:00:00Z', requests: 2, total_tokens: 50, co2_grams: 0.01, co2_saved_grams: 0.02 };

  it('takes day buckets, no points included', () => {
    expect(parseSeries({ bucket: 'day', points: [point] }).points).toEqual([point]);
    expect(parseSeries({ bucket: 'day', points: [] }).points).toEqual([]);
  });

  it.each([
    ['another bucket', { bucket: 'hour', points: [] }],
    ['no points', { bucket: 'day' }],
    ['a bad start', { bucket: 'day', points: [{ ...point, start: 'yesterday' }] }],
    ['a missing figure', { bucket: 'day', points: [{ ...point, co2_saved_grams: null }] }],
  ])('refuses %s', (_name, body) => {
    expect(() => parseSeries(body)).toThrow(StatsShapeError);
  });
});

describe('fetching', () => {
  it("asks for the copro's context and the day buckets since the given time, with the session's token", async () => {
    const urls: string[] = [];
    const auth: (string | null)[] = [];
    vi.stubGlobal(
      'fetch',
      vi.fn(async (input: RequestInfo | URL, init: RequestInit = {}) => {
        urls.push(String(input));
        auth.push(new Headers(init.headers).get('Authorization'));
        const body = String(input).includes('/series') ? { bucket: 'day', points: [] } : TOTALS;
        return new Response(JSON.stringify(body), { status: 200 });
      }),
    );
    app.token = 'tok';
    await fetchStats('c1');
    await fetchDailySeries('c1', new Date('2026-11-03T00:00:00Z'));
    await fetchStats(null);
    expect(urls).toEqual([
      '/mcp/v1/stats?context=copro%3Ac1',
      '/mcp/v1/stats/series?context=copro%3Ac1&bucket=day&from=2026-11-03T00%3A00%3A00.000Z',
      '/mcp/v1/stats',
    ]);
    expect(auth).toEqual(['Bearer tok', 'Bearer tok', 'Bearer tok']);
  });
});
