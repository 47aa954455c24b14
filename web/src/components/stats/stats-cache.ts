/**
 * The last figures loaded for each user and copro, kept in memory for the page's life: offline
 * (or while a refresh fails) the panel shows them with the time they were loaded. Keyed by the
 * user too, so whoever signs in next on the device never sees another user's figures.
 */
import type { CoproStats } from '../../lib/stats-api';
import type { DayTotals } from './co2-chart';

export interface StatsSnapshot {
  totals: CoproStats;
  /** The last 30 days; null when the per-day series could not be read. */
  days: DayTotals[] | null;
  /** When these figures were loaded (ms since the epoch). */
  loadedAt: number;
}

const snapshots = new Map<string, StatsSnapshot>();

const keyOf = (user: string, copro: string | null) => JSON.stringify([user, copro]);

export function cachedStats(user: string, copro: string | null): StatsSnapshot | null {
  return snapshots.get(keyOf(user, copro)) ?? null;
}

export function cacheStats(user: string, copro: string | null, snapshot: StatsSnapshot): void {
  snapshots.set(keyOf(user, copro), snapshot);
}
