/**
 * The charges forecast (`predict_expenses`, docs/tasks/predict_expenses.md) as the page draws it:
 * the result read and checked, the building's history read back from the CSV the user picked
 * (the result holds only the future), and the chart's geometry (history line, forecast line,
 * 80 % and 95 % bands, axes) as plain coordinates. Pure: the component only draws them.
 */

import { parseDecimal } from './decimal';

export interface ForecastPoint {
  month: string; // YYYY-MM
  mean: number;
  lower_80: number;
  upper_80: number;
  lower_95: number;
  upper_95: number;
}

export interface CategoryForecast {
  model: string;
  seasonal: boolean;
  forecast: ForecastPoint[];
}

export interface ForecastResult {
  horizonMonths: number;
  historyMonths: number;
  firstForecastMonth: string;
  method: string;
  categories: Record<string, CategoryForecast>;
  total: ForecastPoint[];
}

export class ForecastDataError extends Error {
  /** The 1-based CSV line at fault, when there is one. */
  constructor(
    message: string,
    readonly line: number | null = null,
  ) {
    super(message);
    this.name = 'ForecastDataError';
  }
}

const MONTH = /^(\d{4})-(\d{2})$/;

/** Months since year 0: consecutive months are consecutive integers. */
export function monthIndex(month: string): number {
  const match = MONTH.exec(month);
  if (!match) throw new ForecastDataError(`not a YYYY-MM month: ${month}`);
  return Number(match[1]) * 12 + Number(match[2]) - 1;
}

export function monthOf(index: number): string {
  const year = Math.floor(index / 12);
  return `${year}-${String((index % 12) + 1).padStart(2, '0')}`;
}

function point(value: unknown, where: string): ForecastPoint {
  const p = value as Record<string, unknown> | null;
  const keys = ['mean', 'lower_80', 'upper_80', 'lower_95', 'upper_95'] as const;
  if (typeof p !== 'object' || p === null || typeof p.month !== 'string' || !MONTH.test(p.month)) {
    throw new ForecastDataError(`${where}: a point without a YYYY-MM month`);
  }
  for (const key of keys) {
    if (typeof p[key] !== 'number' || !Number.isFinite(p[key])) throw new ForecastDataError(`${where} ${p.month}: ${key} is not a number`);
  }
  return {
    month: p.month,
    mean: p.mean as number,
    lower_80: p.lower_80 as number,
    upper_80: p.upper_80 as number,
    lower_95: p.lower_95 as number,
    upper_95: p.upper_95 as number,
  };
}

function points(value: unknown, where: string): ForecastPoint[] {
  if (!Array.isArray(value) || value.length === 0) throw new ForecastDataError(`${where}: no forecast points`);
  return value.map((p) => point(p, where));
}

/** The task's result, checked: a malformed one is an error, not a blank chart. */
export function parseForecastResult(result: unknown): ForecastResult {
  if (typeof result !== 'object' || result === null) throw new ForecastDataError('the result is not an object');
  const r = result as Record<string, unknown>;
  const categories: Record<string, CategoryForecast> = {};
  if (typeof r.categories === 'object' && r.categories !== null) {
    for (const [name, value] of Object.entries(r.categories as Record<string, unknown>)) {
      const c = value as Record<string, unknown>;
      categories[name] = {
        model: typeof c?.model === 'string' ? c.model : '',
        seasonal: c?.seasonal === true,
        forecast: points(c?.forecast, name),
      };
    }
  }
  const total = points(r.total, 'total');
  return {
    horizonMonths: typeof r.horizon_months === 'number' ? r.horizon_months : total.length,
    historyMonths: typeof r.history_months === 'number' ? r.history_months : 0,
    firstForecastMonth: typeof r.first_forecast_month === 'string' ? r.first_forecast_month : total[0].month,
    method: typeof r.method === 'string' ? r.method : '',
    categories,
    total,
  };
}

// ---- the history, from the CSV the user sent -------------------------------------------------

export interface HistoryPoint {
  month: string;
  amount: number;
}

export interface ChargesHistory {
  /** Per category, one point per month present, oldest first. */
  categories: Record<string, HistoryPoint[]>;
  /** The building's total per month (the sum of the categories), oldest first. */
  total: HistoryPoint[];
}

const MONTH_NAMES = new Set(['month', 'mois', 'maand', 'period', 'periode', 'période', 'date', 'datum']);
const CATEGORY_NAMES = new Set(['category', 'categorie', 'catégorie', 'categorie_nl', 'rubriek', 'poste']);
const AMOUNT_NAMES = new Set(['amount', 'amount_eur', 'montant', 'montant_eur', 'bedrag', 'bedrag_eur']);

/** One CSV record's cells (double quotes as in RFC 4180; records are one line each here). */
function cells(line: string, delimiter: string): string[] {
  const out: string[] = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') (cell += '"'), i++;
      else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === delimiter) out.push(cell), (cell = '');
    else cell += ch;
  }
  out.push(cell);
  return out.map((c) => c.trim());
}

/** `2024-03`, `2024-3`, `03/2024` or `3/2024` as YYYY-MM; null otherwise. */
function csvMonth(text: string): string | null {
  const iso = /^(\d{4})-(\d{1,2})$/.exec(text);
  const slash = /^(\d{1,2})\/(\d{4})$/.exec(text);
  const [year, month] = iso ? [iso[1], iso[2]] : slash ? [slash[2], slash[1]] : [null, null];
  if (!year || !month || Number(month) < 1 || Number(month) > 12) return null;
  return `${year}-${month.padStart(2, '0')}`;
}

/**
 * The history in the CSV the node reads (long `month,category,amount` or wide
 * `month,<category>,...`; `,`, `;` or tab). The node checks it for real; this only needs it to
 * draw the past, and says which line it cannot read.
 */
export function parseChargesCsv(text: string): ChargesHistory {
  const lines = text.replace(/^\ufeff/, '').split(/\r?\n/);
  const first = lines[0] ?? '';
  const delimiter = [';', ',', '\t'].reduce((best, d) => (first.split(d).length > first.split(best).length ? d : best), ',');
  const header = cells(first, delimiter).map((h) => h.toLowerCase());
  if (!MONTH_NAMES.has(header[0] ?? '')) throw new ForecastDataError('the header does not start with a month column', 1);
  const long = header.length === 3 && CATEGORY_NAMES.has(header[1]) && AMOUNT_NAMES.has(header[2]);
  const wideNames = cells(first, delimiter).slice(1);
  const sums = new Map<string, Map<string, number>>(); // category -> month -> amount
  const add = (category: string, month: string, amount: number) => {
    const series = sums.get(category) ?? new Map<string, number>();
    series.set(month, (series.get(month) ?? 0) + amount);
    sums.set(category, series);
  };
  lines.slice(1).forEach((line, i) => {
    const number = i + 2;
    if (!line.trim()) return;
    const row = cells(line, delimiter);
    const month = csvMonth(row[0]);
    if (!month) throw new ForecastDataError(`line ${number}: ${row[0]} is not a month`, number);
    if (long) {
      const amount = parseDecimal(row[2] ?? '');
      if (amount === null || row.length !== 3) throw new ForecastDataError(`line ${number}: expected month, category, amount`, number);
      add(row[1], month, amount);
    } else {
      wideNames.forEach((name, c) => {
        const amount = parseDecimal(row[c + 1] ?? '');
        if (amount === null) throw new ForecastDataError(`line ${number}: ${name} is not an amount`, number);
        add(name, month, amount);
      });
    }
  });
  if (sums.size === 0) throw new ForecastDataError('the CSV has no data row', 1);
  const categories: Record<string, HistoryPoint[]> = {};
  const totals = new Map<string, number>();
  for (const [name, series] of sums) {
    categories[name] = [...series.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([month, amount]) => ({ month, amount }));
    for (const [month, amount] of series) totals.set(month, (totals.get(month) ?? 0) + amount);
  }
  const total = [...totals.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([month, amount]) => ({ month, amount: round2(amount) }));
  return { categories, total };
}

function round2(value: number): number {
  return Math.round(value * 100) / 100;
}

// ---- the chart's geometry --------------------------------------------------------------------

export interface ChartSize {
  width: number;
  height: number;
  margin: { top: number; right: number; bottom: number; left: number };
}

export const DEFAULT_SIZE: ChartSize = { width: 640, height: 320, margin: { top: 16, right: 16, bottom: 40, left: 64 } };

export interface ChartPoint {
  x: number;
  y: number;
  month: string;
  value: number;
}

export interface ChartGeometry {
  size: ChartSize;
  history: ChartPoint[];
  forecast: ChartPoint[];
  historyPath: string;
  /** From the last history month (when it is the month before the forecast) through the means. */
  forecastPath: string;
  band80Path: string;
  band95Path: string;
  /** Every January is major (labelled with its year); every third month a minor tick. */
  xTicks: { x: number; month: string; major: boolean }[];
  yTicks: { y: number; value: number }[];
  /** x of the boundary between the past and the forecast. */
  nowX: number;
  yMax: number;
}

/** A "nice" step (1, 2, 2.5 or 5 × 10^n) that splits 0..max into about `count` intervals. */
export function niceStep(max: number, count = 5): number {
  if (!(max > 0)) return 1;
  const raw = max / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * magnitude >= raw) ?? 10;
  return step * magnitude;
}

const fmt = (n: number) => Number(n.toFixed(2));

function path(points: readonly { x: number; y: number }[]): string {
  return points.map((p, i) => `${i ? 'L' : 'M'}${fmt(p.x)},${fmt(p.y)}`).join(' ');
}

function band(points: readonly ForecastPoint[], x: (m: string) => number, y: (v: number) => number, lower: 'lower_80' | 'lower_95', upper: 'upper_80' | 'upper_95'): string {
  if (points.length === 0) return '';
  const top = points.map((p) => ({ x: x(p.month), y: y(p[upper]) }));
  const bottom = [...points].reverse().map((p) => ({ x: x(p.month), y: y(p[lower]) }));
  return `${path([...top, ...bottom])} Z`;
}

/**
 * History (its last `maxHistory` months) and forecast on one time axis; amounts from 0 to a nice
 * bound above the highest 95 % bound or past amount.
 */
export function forecastChart(
  history: readonly HistoryPoint[],
  forecast: readonly ForecastPoint[],
  size: ChartSize = DEFAULT_SIZE,
  maxHistory = 36,
): ChartGeometry {
  if (forecast.length === 0) throw new ForecastDataError('no forecast points to draw');
  const firstForecast = monthIndex(forecast[0].month);
  const past = history.filter((p) => monthIndex(p.month) < firstForecast).slice(-maxHistory);
  const start = past.length ? monthIndex(past[0].month) : firstForecast;
  const end = monthIndex(forecast[forecast.length - 1].month);
  const highest = Math.max(...forecast.map((p) => p.upper_95), ...past.map((p) => p.amount), 0);
  const step = niceStep(highest);
  const yMax = Math.max(step * Math.ceil(highest / step), step);
  const { width, height, margin } = size;
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const span = Math.max(end - start, 1);
  const xOfIndex = (i: number) => margin.left + ((i - start) / span) * plotW;
  const x = (month: string) => xOfIndex(monthIndex(month));
  const y = (value: number) => margin.top + plotH - (Math.max(value, 0) / yMax) * plotH;

  const historyPoints = past.map((p) => ({ x: x(p.month), y: y(p.amount), month: p.month, value: p.amount }));
  const forecastPoints = forecast.map((p) => ({ x: x(p.month), y: y(p.mean), month: p.month, value: p.mean }));
  const last = historyPoints.at(-1);
  const joined = last && monthIndex(last.month) === firstForecast - 1 ? [last, ...forecastPoints] : forecastPoints;

  const xTicks = [];
  for (let i = start; i <= end; i++) {
    if (i % 3 === 0) xTicks.push({ x: fmt(xOfIndex(i)), month: monthOf(i), major: i % 12 === 0 });
  }
  const yTicks = [];
  for (let v = 0; v <= yMax + step / 1e6; v += step) yTicks.push({ y: fmt(y(v)), value: fmt(v) });

  return {
    size,
    history: historyPoints,
    forecast: forecastPoints,
    historyPath: path(historyPoints),
    forecastPath: path(joined),
    band80Path: band(forecast, x, y, 'lower_80', 'upper_80'),
    band95Path: band(forecast, x, y, 'lower_95', 'upper_95'),
    xTicks,
    yTicks,
    nowX: fmt(last ? (last.x + forecastPoints[0].x) / 2 : forecastPoints[0].x),
    yMax,
  };
}
