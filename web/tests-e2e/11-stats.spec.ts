// Scenario 11: the costs panel shows the copro's totals as the gateway counts them (/mcp/v1/stats),
// the new answer included, and the chart of CO₂ emitted vs saved.
import { expect, test } from '@playwright/test';
import { ANSWER_TIMEOUT, messages, parseLocaleNumber, screenshots, sendMessage, showArea, signIn, stats } from './support';

test('the costs panel counts the new answer and draws the CO₂ chart', async ({ page, request }) => {
  await signIn(page);
  const before = (await stats(request)).total_requests;
  await sendMessage(page, 'Bonjour, combien coûte un ascenseur ?');
  await expect(messages(page, 'assistant').last()).toHaveAttribute('data-status', 'done', { timeout: ANSWER_TIMEOUT });
  await expect.poll(async () => (await stats(request)).total_requests, { timeout: 30_000 }).toBe(before + 1);

  await showArea(page, 'stats');
  const panel = page.getByTestId('stats-panel');
  await expect(panel).toBeVisible();
  const refresh = panel.getByTestId('stats-refresh');
  if (await refresh.count()) await refresh.click();
  else await page.reload();
  const totals = page.getByTestId('stats-totals');
  const requests = totals.locator('[data-stat="total_requests"]');
  await expect.poll(async () => parseLocaleNumber(await requests.innerText()), { timeout: 15_000 }).toBe(before + 1);
  const chart = page.getByTestId('co2-chart');
  await expect(chart).toBeVisible();
  expect(await chart.evaluate((node) => node.tagName.toLowerCase())).toBe('svg');
  await screenshots(page, 'stats', 'stats', chart);
});
