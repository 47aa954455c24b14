import { describe, expect, it } from 'vitest';
import type { SeriesPoint } from '../../lib/stats-api';
import { chartLayout, lastDays, niceCeiling, polylinePoints, type DayTotals } from './co2-chart';

const NOW = Date.parse('2026-12-02T09:30:00Z');
const SIZE = { width: 400, height: 200 };

function point(start: string, co2: number, saved: number, requests = 1): SeriesPoint {
  return { start, requests, total_tokens: 100 * requests, co2_grams: co2, co2_saved_grams: saved };
}

function day(dayName: string, emitted: number, saved: number): DayTotals {
  return { day: dayName, emitted, saved, requests: 1 };
}

describe('lastDays', () => {
  it('gives 30 days ending today (UTC), zeros where the series has no point', () => {
    const days = lastDays([], 30, NOW);
    expect(days).toHaveLength(30);
    expect(days[0].day).toBe('2026-11-03');
    expect(days[29].day).toBe('2026-12-02');
    expect(days.every((d) => d.emitted === 0 && d.saved === 0 && d.requests === 0)).toBe(true);
  });

  it('puts each point on its UTC day, sums two points of one day, and drops points outside the window', () => {
    const days = lastDays(
      [
        point('2026-12-02T00:00:00Z', 0.5, 1.25, 2),
        point('2026-12-02T00:00:00+00:00', 0.25, 0, 1),
        point('2026-11-20T00:00:00Z', 3, 4),
        point('2026-11-02T00:00:00Z', 99, 99),
        point('2026-12-03T00:00:00Z', 77, 77),
      ],
      30,
      NOW,
    );
    expect(days[29]).toEqual({ day: '2026-12-02', emitted: 0.75, saved: 1.25, requests: 3 });
    expect(days.find((d) => d.day === '2026-11-20')).toEqual({ day: '2026-11-20', emitted: 3, saved: 4, requests: 1 });
    expect(days.reduce((sum, d) => sum + d.emitted, 0)).toBe(3.75);
  });
});

describe('niceCeiling', () => {
  it.each([
    [0, 1],
    [-3, 1],
    [Number.NaN, 1],
    [0.0123, 0.02],
    [1, 1],
    [1.2, 2],
    [2.3, 2.5],
    [4, 5],
    [7, 10],
    [250, 250],
    [251, 500],
  ])('%s → %s', (value, expected) => {
    expect(niceCeiling(value)).toBeCloseTo(expected, 10);
  });
});

describe('chartLayout', () => {
  it('lays out no day at all as an empty chart with a unit y axis', () => {
    const layout = chartLayout([], SIZE);
    expect(layout.empty).toBe(true);
    expect(layout.emitted).toEqual([]);
    expect(layout.xLabels).toEqual([]);
    expect(layout.yMax).toBe(1);
    expect(layout.yTicks.map((t) => t.value)).toEqual([0, 0.5, 1]);
  });

  it('lays out only zeros as empty, on the baseline', () => {
    const layout = chartLayout([day('2026-12-01', 0, 0), day('2026-12-02', 0, 0)], SIZE);
    expect(layout.empty).toBe(true);
    expect(layout.emitted.every((p) => p.y === layout.plot.bottom)).toBe(true);
  });

  it('centres a single day and labels it', () => {
    const layout = chartLayout([day('2026-12-02', 2, 4)], SIZE);
    const middle = (layout.plot.left + layout.plot.right) / 2;
    expect(layout.empty).toBe(false);
    expect(layout.emitted).toEqual([{ x: middle, y: expect.any(Number) }]);
    expect(layout.xLabels).toEqual([{ index: 0, x: middle }]);
    expect(layout.yMax).toBe(5);
    // 4 of 5 g: four fifths of the way up; 2 g: two fifths.
    const height = layout.plot.bottom - layout.plot.top;
    expect(layout.saved[0].y).toBeCloseTo(layout.plot.bottom - 0.8 * height);
    expect(layout.emitted[0].y).toBeCloseTo(layout.plot.bottom - 0.4 * height);
  });

  it('spreads many days across the plot, the highest value under the top, first and last days labelled', () => {
    const days = lastDays(
      [point('2026-11-03T00:00:00Z', 1, 0), point('2026-11-25T00:00:00Z', 0.2, 7.5), point('2026-12-02T00:00:00Z', 3, 2)],
      30,
      NOW,
    );
    const layout = chartLayout(days, SIZE);
    expect(layout.emitted).toHaveLength(30);
    expect(layout.emitted[0].x).toBe(layout.plot.left);
    expect(layout.emitted[29].x).toBe(layout.plot.right);
    const xs = layout.emitted.map((p) => p.x);
    expect(xs.every((x, i) => i === 0 || x > xs[i - 1])).toBe(true);
    expect(layout.yMax).toBe(10);
    const top = Math.min(...layout.saved.map((p) => p.y), ...layout.emitted.map((p) => p.y));
    expect(top).toBeGreaterThanOrEqual(layout.plot.top);
    expect(layout.saved[22].y).toBeCloseTo(layout.plot.bottom - 0.75 * (layout.plot.bottom - layout.plot.top));
    expect(layout.xLabels.map((l) => l.index)).toEqual([0, 7, 15, 22, 29]);
  });

  it('never draws outside a tiny chart', () => {
    const layout = chartLayout([day('a', 1, 1), day('b', 2, 2)], { width: 10, height: 10 });
    expect(layout.plot.right).toBeGreaterThan(layout.plot.left);
    expect(layout.plot.bottom).toBeGreaterThan(layout.plot.top);
  });
});

describe('polylinePoints', () => {
  it('writes x,y pairs with one decimal', () => {
    expect(polylinePoints([{ x: 1, y: 2.345 }, { x: 3.06, y: 4 }])).toBe('1.0,2.3 3.1,4.0');
  });
});
