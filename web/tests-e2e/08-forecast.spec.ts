// Scenario 8: the fixture charges (CSV, 2022-2024) forecast by the grid, shown as a chart with intervals.
import { expect, test } from '@playwright/test';
import { GRID_TIMEOUT, fixture, screenshots, showArea, signIn } from './support';

test('the fixture charges are forecast and drawn as a chart', async ({ page }) => {
  test.setTimeout(GRID_TIMEOUT + 60_000);
  await signIn(page);
  await showArea(page, 'actions');
  await page.getByTestId('action-forecast').click();
  await page.getByTestId('action-file-input').setInputFiles(fixture('charges-les-tilleuls-2022-2024.csv'));
  await page.getByTestId('action-submit').click();
  const chart = page.getByTestId('forecast-chart');
  await expect(chart).toBeVisible({ timeout: GRID_TIMEOUT });
  expect(await chart.evaluate((node) => node.tagName.toLowerCase())).toBe('svg');
  // A drawn series (and its interval band): shapes with real geometry, not an empty frame.
  const shapes = chart.locator('path, polyline, polygon, rect, circle');
  await expect.poll(() => shapes.count()).toBeGreaterThan(1);
  const drawn = await shapes.evaluateAll((nodes) =>
    nodes.filter((n) => {
      const box = (n as SVGGraphicsElement).getBBox();
      return box.width > 0 || box.height > 0;
    }).length,
  );
  expect(drawn).toBeGreaterThan(1);
  // Described for those who cannot see it: a title or a label.
  const described = await chart.evaluate(
    (node) => Boolean(node.getAttribute('aria-label') || node.getAttribute('aria-labelledby') || node.querySelector('title')),
  );
  expect(described).toBe(true);
  await screenshots(page, 'forecast', 'actions', chart);
});
