// Scenario 9: the language switch turns the page to Dutch, words from the Dutch catalogue, and keeps it.
import { expect, test } from '@playwright/test';
import { common as fr } from '../src/i18n/fr/common';
import { common as nl } from '../src/i18n/nl/common';
import { PHONE, screenshots, showArea, signIn } from './support';

test.use({ viewport: PHONE });

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

test('the page switches to Dutch and stays so after a reload', async ({ page }) => {
  await signIn(page);
  const tabs = page.getByTestId('tab-actions');
  await expect(tabs).toHaveText(fr.area.actions);
  await page.getByTestId('language-switch').selectOption('nl');
  await expect(tabs).toHaveText(nl.area.actions);
  await expect(page.getByTestId('tab-chat')).toHaveText(nl.area.chat);
  await expect(page.getByTestId('sign-out')).toHaveAccessibleName(new RegExp(escape(nl.signOut)));
  await expect(page.locator('html')).toHaveAttribute('lang', /^nl/);
  await showArea(page, 'chat');
  await page.reload();
  await expect(page.getByTestId('tab-actions')).toHaveText(nl.area.actions, { timeout: 30_000 });
  await expect(page.getByTestId('language-switch')).toHaveValue('nl');
  await screenshots(page, 'dutch', 'chat');
});
