// Scenario 10: axe-core finds no serious or critical violation on the sign-in page and the
// signed-in page, at 360 and 1280 px, in the light theme and the dark one (every violation printed).
import AxeBuilder from '@axe-core/playwright';
import { expect, test, type Page } from '@playwright/test';
import { APP_PATH, DESKTOP, PHONE, screenshots, showArea, signIn } from './support';

const BLOCKING = new Set(['serious', 'critical']);

async function scan(page: Page, label: string): Promise<string[]> {
  // Transitions done, so that colours are measured as they end up.
  await page.waitForTimeout(500);
  const results = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']).analyze();
  for (const violation of results.violations) {
    const targets = violation.nodes.map((node) => node.target.join(' ')).join(' | ');
    console.log(`[axe ${label}] ${violation.impact} ${violation.id}: ${violation.help} (${violation.nodes.length}: ${targets})`);
  }
  return results.violations
    .filter((violation) => BLOCKING.has(violation.impact ?? ''))
    .map((violation) => `${label}: ${violation.impact} ${violation.id} on ${violation.nodes.map((n) => n.target.join(' ')).join(', ')}`);
}

test('no serious accessibility violation, signed out and in, phone and desktop, light and dark', async ({ page }) => {
  test.setTimeout(180_000);
  const blocking: string[] = [];
  for (const size of [PHONE, DESKTOP]) {
    await page.setViewportSize(size);
    await page.goto(APP_PATH);
    await expect(page.getByTestId('signin-token-input')).toBeVisible();
    blocking.push(...(await scan(page, `sign-in ${size.width}`)));
  }
  await screenshots(page, 'signin');

  await page.setViewportSize(PHONE);
  await signIn(page);
  for (const theme of ['light', 'dark'] as const) {
    await page.getByTestId('theme-switch').selectOption(theme);
    if (theme === 'dark') await expect(page.locator('html')).toHaveAttribute('data-theme', 'dark');
    else await expect(page.locator('html')).not.toHaveAttribute('data-theme', 'dark');
    for (const size of [PHONE, DESKTOP]) {
      await page.setViewportSize(size);
      for (const area of ['chat', 'actions', 'stats'] as const) {
        if (size === DESKTOP && area !== 'chat') break; // a wide screen shows the three areas at once
        await showArea(page, area);
        blocking.push(...(await scan(page, `signed in ${theme} ${size.width} ${area}`)));
      }
    }
    await screenshots(page, `signed-in-${theme}`, 'chat');
  }
  expect(blocking, blocking.join('\n')).toEqual([]);
});
