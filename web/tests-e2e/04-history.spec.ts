// Scenario 4: the conversation is kept on the device (IndexedDB): a reload shows it again, as it was.
import { expect, test } from '@playwright/test';
import { ANSWER_TIMEOUT, messages, screenshots, sendMessage, signIn } from './support';

test('a reload shows the history of the conversation', async ({ page }) => {
  await signIn(page);
  const question = `Quelle est la capitale de la Belgique ? (historique ${Date.now()})`;
  await sendMessage(page, question);
  const answer = messages(page, 'assistant').last();
  await expect(answer).toHaveAttribute('data-status', 'done', { timeout: ANSWER_TIMEOUT });
  const answerText = ((await answer.textContent()) ?? '').trim();
  const count = await messages(page).count();

  await page.reload();
  // Still signed in (the session is kept on the device), the same messages in the same order.
  await expect(page.getByTestId('sign-out')).toBeVisible({ timeout: 30_000 });
  await expect(messages(page)).toHaveCount(count);
  const user = messages(page, 'user').last();
  await expect(user).toContainText(question);
  await expect(user).toHaveAttribute('data-status', 'done');
  const restored = messages(page, 'assistant').last();
  await expect(restored).toHaveAttribute('data-status', 'done');
  expect(((await restored.textContent()) ?? '').trim()).toBe(answerText);
  await expect(restored.getByTestId('message-meta')).toContainText('CO₂');
  await screenshots(page, 'history', 'chat');
});
