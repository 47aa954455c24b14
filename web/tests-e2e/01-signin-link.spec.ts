// Scenario 1: the one-time link `koprogo login-link` prints opens a session without copy-paste,
// leaves no secret in the address bar, and does not work twice.
import { expect, test } from '@playwright/test';
import { common } from '../src/i18n/fr/common';
import { PHONE, required, screenshots, showArea } from './support';

test.use({ viewport: PHONE });

test('the one-time link signs in once and leaves no secret in the URL', async ({ browser, page }) => {
  const link = required('KOPROGO_LOGIN_URL');
  await page.goto(link);
  await expect(page.getByTestId('sign-out')).toBeVisible({ timeout: 30_000 });
  await showArea(page, 'chat');
  await expect(page.getByTestId('composer-input')).toBeEditable();
  const secret = new URL(link);
  const after = new URL(page.url());
  expect(after.pathname).toBe('/mcp-chat/');
  // Whatever carried the one-time code (query or fragment) is gone once the page has loaded.
  expect(after.search + after.hash).toBe('');
  for (const value of [...secret.searchParams.values(), secret.hash.slice(1)].filter((v) => v.length >= 8)) {
    expect(page.url()).not.toContain(value);
  }
  await screenshots(page, 'signin-link', 'chat');

  // The same link in a fresh browser (no session) does not sign in a second time.
  const other = await browser.newContext({ viewport: PHONE, locale: 'fr-BE' });
  try {
    const again = await other.newPage();
    await again.goto(link);
    await expect(again.getByTestId('signin-token-input')).toBeVisible({ timeout: 30_000 });
    await expect(again.getByTestId('sign-out')).toHaveCount(0);
    // And says why, with the way to a new link.
    await expect(again.getByText(common.signIn.errors.login_link_used)).toBeVisible();
    await screenshots(again, 'signin-link-used');
  } finally {
    await other.close();
  }
});
