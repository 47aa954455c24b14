/**
 * The costs panel's two reads from the gateway: a copro's totals (GET /mcp/v1/stats) and its CO₂
 * per day (GET /mcp/v1/stats/series). The bodies are shape-checked here, so a component gets
 * numbers or a StatsShapeError, never `undefined` where a number should be.
 */
import { apiJson } from './http';

export interface CoproStats {
  total_requests: number;
  total_tokens: number;
  total_co2_grams: number;
  co2_saved_grams: number;
  edge_requests: number;
  cloud_requests: number;
  grid_requests: number;
  avg_latency_ms: number;
  models_used: string[];
  grid_token_revenue: number;
}

export interface SeriesPoint {
  /** The bucket's start, ISO 8601 (a day's UTC midnight for bucket=day). */
  start: string;
  requests: number;
  total_tokens: number;
  co2_grams: number;
  co2_saved_grams: number;
}

export interface StatsSeries {
  bucket: 'day';
  points: SeriesPoint[];
}

export class StatsShapeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StatsShapeError';
  }
}

const STATS_NUMBERS = [
  'total_requests',
  'total_tokens',
  'total_co2_grams',
  'co2_saved_grams',
  'edge_requests',
  'cloud_requests',
  'grid_requests',
  'avg_latency_ms',
  'grid_token_revenue',
] as const;
const POINT_NUMBERS = ['requests', 'total_tokens', 'co2_grams', 'co2_saved_grams'] as const;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isNumber(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

function contextQuery(copro: string | null): string {
  return copro === null ? '' : `context=${encodeURIComponent(`copro:${copro}`)}`;
}

/** Checks a /mcp/v1/stats body. */
export function parseStats(body: unknown): CoproStats {
  if (!isRecord(body)) throw new StatsShapeError('the stats are not a JSON object');
  for (const name of STATS_NUMBERS) {
    if (!isNumber(body[name])) throw new StatsShapeError(`the stats' ${name} is not a number`);
  }
  const models = body.models_used;
  if (!Array.isArray(models) || !models.every((model) => typeof model === 'string')) {
    throw new StatsShapeError("the stats' models_used is not a list of model ids");
  }
  return body as unknown as CoproStats;
}

/** Checks a /mcp/v1/stats/series body. */
export function parseSeries(body: unknown): StatsSeries {
  if (!isRecord(body) || body.bucket !== 'day' || !Array.isArray(body.points)) {
    throw new StatsShapeError("the series is not {bucket: 'day', points: [...]}");
  }
  for (const point of body.points) {
    if (!isRecord(point) || typeof point.start !== 'string' || Number.isNaN(Date.parse(point.start))) {
      throw new StatsShapeError('a series point has no valid start');
    }
    for (const name of POINT_NUMBERS) {
      if (!isNumber(point[name])) throw new StatsShapeError(`a series point's ${name} is not a number`);
    }
  }
  return body as unknown as StatsSeries;
}

/** A copro's totals over all its answered requests and completed grid tasks (every copro of the token when null). */
export async function fetchStats(copro: string | null): Promise<CoproStats> {
  const query = contextQuery(copro);
  return parseStats(await apiJson<unknown>(`/mcp/v1/stats${query ? `?${query}` : ''}`));
}

/** A copro's per-day figures from `since` on (days without a request may be absent). */
export async function fetchDailySeries(copro: string | null, since: Date): Promise<StatsSeries> {
  const params = [contextQuery(copro), 'bucket=day', `from=${encodeURIComponent(since.toISOString())}`].filter(Boolean);
  return parseSeries(await apiJson<unknown>(`/mcp/v1/stats/series?${params.join('&')}`));
}
