// Scenario 14 (issue 18): when the gateway says its building is cut from the hub (GET /mcp/v1/site,
// hub_link "down"), the header shows a banner in French, and the page stays usable; when the link
// returns, the banner goes. The stack under test is a hub (always "up", checked first against the
// real gateway); the building's answers are given at the network boundary (page.route), as a
// building's gateway gives them (tests/e2e/test_building_site_link.py checks the gateway's side).
import { expect, test, type Page, type Route } from '@playwright/test';
import { common } from '../src/i18n/fr/common';
import { screenshots, signIn } from './support';

// No service worker: page.route sees the page's own requests only, never those a worker makes.
test.use({ serviceWorkers: 'block' });

// The page polls every 10 s: room for one missed round on a loaded machine.
const POLL_TIMEOUT = 30_000;

async function answerSite(page: Page, hubLink: 'up' | 'down'): Promise<void> {
  await page.unroute('**/mcp/v1/site');
  await page.route('**/mcp/v1/site', (route: Route) =>
    route.fulfill({
      status: 200,
      contentType: 'application/json',
      body: JSON.stringify({ site: 'building', hub_link: hubLink, since: new Date().toISOString() }),
    }),
  );
}

test('the header says the building is offline while the gateway says so, and no longer after', async ({ page }) => {
  await signIn(page);
  const link = page.getByTestId('hub-link-status');
  const banner = page.getByTestId('hub-offline-banner');
  // The hub's gateway itself: up, no banner.
  await expect(link).toHaveAttribute('data-hub-link', 'up');
  await expect(banner).toHaveCount(0);

  await answerSite(page, 'down');
  await expect(banner).toBeVisible({ timeout: POLL_TIMEOUT });
  await expect(banner).toHaveText(common.hubOffline);
  expect(common.hubOffline).toContain('Bâtiment hors ligne');
  // Not blocking: the chat can still be written to (the building's own models answer).
  await expect(page.getByTestId('composer-input')).toBeEditable();
  await screenshots(page, 'building-offline', 'chat');

  // A poll that fails keeps the banner (the gateway unreachable for a moment).
  await page.unroute('**/mcp/v1/site');
  await page.route('**/mcp/v1/site', (route: Route) => route.abort('connectionfailed'));
  await page.waitForEvent('requestfailed', {
    predicate: (request) => request.url().endsWith('/mcp/v1/site'),
    timeout: POLL_TIMEOUT,
  });
  await page.waitForTimeout(500);
  await expect(banner).toBeVisible();

  await answerSite(page, 'up');
  await expect(banner).toHaveCount(0, { timeout: POLL_TIMEOUT });
  await expect(link).toHaveAttribute('data-hub-link', 'up');
});
