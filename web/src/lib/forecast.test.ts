import { describe, expect, it } from 'vitest';
import { ForecastDataError, forecastChart, monthIndex, monthOf, niceStep, parseChargesCsv, parseForecastResult, type ForecastPoint } from './forecast';

// The first lines of shared/fixtures/charges-les-tilleuls-2022-2024.csv (long form).
const CSV_LONG = `month,category,amount_eur
2022-01,chauffage,4782.51
2022-01,electricite_communs,312.22
2022-02,chauffage,4353.82
2022-02,electricite_communs,311.21
2022-03,chauffage,3540.41
2022-03,electricite_communs,323.11
`;

function point(month: string, mean: number, spread80: number, spread95: number): ForecastPoint {
  return { month, mean, lower_80: mean - spread80, upper_80: mean + spread80, lower_95: mean - spread95, upper_95: mean + spread95 };
}

// docs/tasks/predict_expenses.md's example month, and one more.
const RESULT = {
  horizon_months: 2,
  history_months: 3,
  first_forecast_month: '2022-04',
  method: 'ETS',
  categories: {
    chauffage: {
      model: 'ETS(M,N,M) seasonal 12',
      seasonal: true,
      forecast: [
        { month: '2022-04', mean: 5275.69, lower_80: 4918.75, upper_80: 5640.92, lower_95: 4707.97, upper_95: 5840.71 },
        { month: '2022-05', mean: 3000, lower_80: 2800, upper_80: 3200, lower_95: 2700, upper_95: 3300 },
      ],
    },
  },
  total: [
    { month: '2022-04', mean: 7491.67, lower_80: 7000, upper_80: 8000, lower_95: 6800, upper_95: 8200 },
    { month: '2022-05', mean: 3500, lower_80: 3300, upper_80: 3700, lower_95: 3200, upper_95: 3800 },
  ],
};

describe('parseForecastResult', () => {
  it('reads the categories and the total', () => {
    const forecast = parseForecastResult(RESULT);
    expect(forecast.total).toHaveLength(2);
    expect(forecast.categories.chauffage.seasonal).toBe(true);
    expect(forecast.categories.chauffage.forecast[0].upper_95).toBe(5840.71);
    expect(forecast.firstForecastMonth).toBe('2022-04');
  });

  it('refuses a result whose points are not numbers', () => {
    const bad = { ...RESULT, total: [{ ...RESULT.total[0], mean: 'beaucoup' }] };
    expect(() => parseForecastResult(bad)).toThrow(ForecastDataError);
    expect(() => parseForecastResult({ categories: {} })).toThrow(/total/);
  });
});

describe('parseChargesCsv', () => {
  it('sums the categories of the long form into the building total per month', () => {
    const history = parseChargesCsv(CSV_LONG);
    expect(Object.keys(history.categories)).toEqual(['chauffage', 'electricite_communs']);
    expect(history.total).toEqual([
      { month: '2022-01', amount: 5094.73 },
      { month: '2022-02', amount: 4665.03 },
      { month: '2022-03', amount: 3863.52 },
    ]);
  });

  it('reads the wide form written by a Belgian spreadsheet (; and decimal commas)', () => {
    const history = parseChargesCsv('mois;chauffage;nettoyage\r\n01/2024;"4 782,51";567,49\r\n2/2024;4353,82;549,77\r\n');
    expect(history.categories.chauffage).toEqual([
      { month: '2024-01', amount: 4782.51 },
      { month: '2024-02', amount: 4353.82 },
    ]);
    expect(history.total[0]).toEqual({ month: '2024-01', amount: 5350 });
  });

  it('names the line it cannot read', () => {
    expect(() => parseChargesCsv('month,category,amount\n2024-01,chauffage,abc\n')).toThrow(/line 2/);
    expect(() => parseChargesCsv('mois;chauffage\n2024-13;12\n')).toThrow(/line 2/);
    expect(() => parseChargesCsv('category,amount\n')).toThrow(ForecastDataError);
  });
});

describe('forecastChart', () => {
  const size = { width: 400, height: 200, margin: { top: 0, right: 0, bottom: 0, left: 0 } };
  const history = [
    { month: '2021-10', amount: 1000 },
    { month: '2021-11', amount: 2000 },
    { month: '2021-12', amount: 3000 },
  ];
  const forecast = [point('2022-01', 4000, 500, 1000), point('2022-02', 3000, 500, 1000)];

  it('puts past and future months on one axis and amounts from 0 to a nice bound', () => {
    const chart = forecastChart(history, forecast, size);
    // 5 months from 2021-10 to 2022-02: 4 steps of 100 px.
    expect(chart.history.map((p) => p.x)).toEqual([0, 100, 200]);
    expect(chart.forecast.map((p) => p.x)).toEqual([300, 400]);
    // highest 95 % bound 5000 → step 1000, max 5000: 200 px for 5000 €.
    expect(chart.yMax).toBe(5000);
    expect(chart.history.map((p) => p.y)).toEqual([160, 120, 80]);
    expect(chart.forecast[0].y).toBe(40);
    expect(chart.yTicks.map((t) => t.value)).toEqual([0, 1000, 2000, 3000, 4000, 5000]);
    expect(chart.yTicks[0].y).toBe(200);
    expect(chart.nowX).toBe(250);
  });

  it('joins the forecast line to the last past month and draws the bands around the means', () => {
    const chart = forecastChart(history, forecast, size);
    expect(chart.historyPath).toBe('M0,160 L100,120 L200,80');
    expect(chart.forecastPath).toBe('M200,80 L300,40 L400,80');
    // 95 % band: upper 5000 and 4000 left to right, then lower 2000 and 3000 right to left.
    expect(chart.band95Path).toBe('M300,0 L400,40 L400,120 L300,80 Z');
    expect(chart.band80Path).toBe('M300,20 L400,60 L400,100 L300,60 Z');
  });

  it('labels each January as major and every third month as minor', () => {
    const chart = forecastChart(history, forecast, size);
    expect(chart.xTicks).toEqual([
      { x: 0, month: '2021-10', major: false },
      { x: 300, month: '2022-01', major: true },
    ]);
  });

  it('draws the forecast alone when the history is unknown, and keeps only the last months of a long one', () => {
    const alone = forecastChart([], forecast, size);
    expect(alone.historyPath).toBe('');
    expect(alone.forecastPath).toBe('M0,40 L400,80');
    const long = Array.from({ length: 60 }, (_, i) => ({ month: monthOf(monthIndex('2017-01') + i), amount: 100 }));
    const chart = forecastChart(long, forecast, size, 24);
    expect(chart.history).toHaveLength(24);
    expect(chart.history[0].month).toBe('2020-01');
  });

  it('chooses round steps', () => {
    expect(niceStep(5000)).toBe(1000);
    expect(niceStep(8200)).toBe(2000);
    expect(niceStep(11_500)).toBe(2500);
    expect(niceStep(0)).toBe(1);
  });
});
