// Scenario 3: the stop button cancels a long answer; the bubble says stopped and keeps what came.
import { expect, test } from '@playwright/test';
import { ANSWER_TIMEOUT, PHONE, messages, screenshots, sendMessage, signIn } from './support';

test.use({ viewport: PHONE });

test('stop cancels a long answer and keeps its partial text', async ({ page }) => {
  await signIn(page);
  await sendMessage(
    page,
    "Écris un très long texte, d'au moins mille mots, sur l'histoire des copropriétés en Belgique, " +
      'chapitre par chapitre, sans jamais conclure.',
  );
  const answer = messages(page, 'assistant').last();
  await expect(answer).toHaveAttribute('data-status', 'streaming', { timeout: ANSWER_TIMEOUT });
  // Some words first, so that there is a partial answer to keep.
  const length = async () => ((await answer.textContent()) ?? '').length;
  const atStart = await length();
  await expect.poll(length, { timeout: ANSWER_TIMEOUT }).toBeGreaterThan(atStart + 20);
  await expect(answer, 'the answer finished before it could be stopped').toHaveAttribute('data-status', 'streaming');
  const stop = page.getByTestId('stop-button');
  await expect(stop).toBeVisible();
  const beforeStop = await length();
  await stop.click();
  await expect(answer).toHaveAttribute('data-status', 'stopped', { timeout: 15_000 });
  const partial = (await answer.textContent()) ?? '';
  expect(partial.length).toBeGreaterThanOrEqual(beforeStop);
  // Nothing more arrives after the stop, and the composer is usable again.
  await page.waitForTimeout(3_000);
  expect((await answer.textContent()) ?? '').toBe(partial);
  await expect(answer).toHaveAttribute('data-status', 'stopped');
  await expect(page.getByTestId('stop-button')).toBeHidden();
  await expect(page.getByTestId('composer-input')).toBeEditable();
  await screenshots(page, 'stop', 'chat');
});
