/**
 * The CO₂ chart's arithmetic, pure: the last N days filled from the series (a day without a
 * request is a zero, not a gap), a round top for the y axis, and where each point, tick and
 * label goes in a chart of a given size. Co2Chart.svelte only draws what this returns.
 */
import type { SeriesPoint } from '../../lib/stats-api';

export interface DayTotals {
  /** The day, 'YYYY-MM-DD' in UTC (the gateway's day buckets start at UTC midnight). */
  day: string;
  emitted: number;
  saved: number;
  requests: number;
}

export interface ChartSize {
  width: number;
  height: number;
}

export interface PlotPoint {
  x: number;
  y: number;
}

export interface ChartLayout {
  /** The plot area inside the axes. */
  plot: { left: number; top: number; right: number; bottom: number };
  yMax: number;
  yTicks: { value: number; y: number }[];
  /** Indices of the days that get a label under the x axis. */
  xLabels: { index: number; x: number }[];
  emitted: PlotPoint[];
  saved: PlotPoint[];
  /** No day has a gram emitted or saved: the chart says "nothing yet" instead of a flat line. */
  empty: boolean;
}

const DAY_MS = 86_400_000;
// Room for the y axis' title above, its tick labels on the left, the day labels and the x axis' title below.
export const MARGIN = { left: 48, right: 12, top: 24, bottom: 40 };

function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** The `days` days ending with today (UTC), oldest first, each with its totals from `points`. */
export function lastDays(points: readonly SeriesPoint[], days: number, nowMs: number): DayTotals[] {
  const byDay = new Map<string, DayTotals>();
  const todayStart = Date.parse(utcDay(nowMs));
  for (let i = days - 1; i >= 0; i--) {
    const day = utcDay(todayStart - i * DAY_MS);
    byDay.set(day, { day, emitted: 0, saved: 0, requests: 0 });
  }
  for (const point of points) {
    const totals = byDay.get(utcDay(Date.parse(point.start)));
    if (!totals) continue; // outside the window
    totals.emitted += point.co2_grams;
    totals.saved += point.co2_saved_grams;
    totals.requests += point.requests;
  }
  return [...byDay.values()];
}

/** The smallest of 1, 2, 2.5, 5 × 10ⁿ at or above `value` (1 for nothing), so ticks read well. */
export function niceCeiling(value: number): number {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * magnitude >= value * (1 - 1e-12)) return step * magnitude;
  }
  return 10 * magnitude;
}

/** Where everything goes in a `size` chart of `days` (oldest first). */
export function chartLayout(days: readonly DayTotals[], size: ChartSize, xLabelCount = 5): ChartLayout {
  const plot = {
    left: MARGIN.left,
    top: MARGIN.top,
    right: Math.max(MARGIN.left + 1, size.width - MARGIN.right),
    bottom: Math.max(MARGIN.top + 1, size.height - MARGIN.bottom),
  };
  const highest = Math.max(0, ...days.flatMap((d) => [d.emitted, d.saved]));
  const yMax = niceCeiling(highest);
  const y = (value: number) => plot.bottom - (Math.max(0, value) / yMax) * (plot.bottom - plot.top);
  const x = (index: number) =>
    days.length === 1 ? (plot.left + plot.right) / 2 : plot.left + (index / (days.length - 1)) * (plot.right - plot.left);
  const yTicks = [0, 0.5, 1].map((share) => ({ value: share * yMax, y: y(share * yMax) }));
  const xLabels: { index: number; x: number }[] = [];
  if (days.length > 0) {
    const count = Math.min(days.length, Math.max(1, xLabelCount));
    const seen = new Set<number>();
    for (let k = 0; k < count; k++) {
      // Spread over the days, the last day (today) always labelled.
      const index = count === 1 ? days.length - 1 : Math.round((k * (days.length - 1)) / (count - 1));
      if (!seen.has(index)) xLabels.push({ index, x: x(index) });
      seen.add(index);
    }
  }
  return {
    plot,
    yMax,
    yTicks,
    xLabels,
    emitted: days.map((d, i) => ({ x: x(i), y: y(d.emitted) })),
    saved: days.map((d, i) => ({ x: x(i), y: y(d.saved) })),
    empty: highest === 0,
  };
}

/** An SVG polyline's `points` attribute. */
export function polylinePoints(points: readonly PlotPoint[]): string {
  return points.map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' ');
}
