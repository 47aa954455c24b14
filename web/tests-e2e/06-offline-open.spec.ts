// Scenario 6: once visited online (the service worker installed), the page opens with no network:
// the app shell from the cache, the session and the history from IndexedDB.
import { expect, test } from '@playwright/test';
import { common } from '../src/i18n/fr/common';
import { ANSWER_TIMEOUT, APP_PATH, messages, screenshots, sendMessage, signIn } from './support';

test('the page opens offline with its shell and the history', async ({ context, page }) => {
  await signIn(page);
  const question = `Combien de copropriétaires faut-il pour une assemblée ? (${Date.now()})`;
  await sendMessage(page, question);
  const answer = messages(page, 'assistant').last();
  await expect(answer).toHaveAttribute('data-status', 'done', { timeout: ANSWER_TIMEOUT });
  const answerText = ((await answer.textContent()) ?? '').trim();
  // The service worker is installed (its precache filled) and active: the next visit goes through it.
  const scope = await page.evaluate(async () => (await navigator.serviceWorker.ready).scope);
  expect(new URL(scope).pathname).toBe('/mcp-chat/');

  await context.setOffline(true);
  await page.goto(APP_PATH);
  await expect(page.getByTestId('connection-status')).toContainText(common.offline);
  await expect(page.getByTestId('sign-out')).toBeVisible({ timeout: 30_000 });
  await expect(page.getByTestId('composer-input')).toBeVisible();
  await expect(messages(page, 'user').last()).toContainText(question);
  const restored = messages(page, 'assistant').last();
  await expect(restored).toHaveAttribute('data-status', 'done');
  expect(((await restored.textContent()) ?? '').trim()).toBe(answerText);
  await screenshots(page, 'offline-open', 'chat');
  await context.setOffline(false);
});
