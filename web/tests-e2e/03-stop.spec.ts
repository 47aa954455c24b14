// Scenario 3: the stop button cancels a long answer; the bubble says stopped and keeps what came,
// also after a reload.
import { expect, test } from '@playwright/test';
import { ANSWER_TIMEOUT, PHONE, messages, screenshots, sendMessage, signIn } from './support';

test.use({ viewport: PHONE });

// The bundled 135M model writes its longest answers (to the 256-token cap, 2-4 s on two cores) for
// a story asked in English; in French it stops after a sentence or two.
const LONG_QUESTION =
  'Write a very long story about an old apartment building in Brussels, at least 2000 words, in many chapters.';

test('stop cancels a long answer and keeps its partial text', async ({ page }) => {
  await signIn(page);
  await sendMessage(page, LONG_QUESTION);
  const answer = messages(page, 'assistant').last();
  const stop = page.getByTestId('stop-button');
  await expect(answer).toHaveAttribute('data-status', 'streaming', { timeout: ANSWER_TIMEOUT });
  await expect(stop).toBeVisible();
  await stop.click();
  await expect(answer, 'the answer ended before the stop took effect').toHaveAttribute('data-status', 'stopped', {
    timeout: 15_000,
  });
  const partial = ((await answer.innerText()) ?? '').trim();
  expect(partial.length).toBeGreaterThan(0);
  // Nothing more arrives after the stop, and the composer is usable again.
  await page.waitForTimeout(4_000);
  expect(((await answer.innerText()) ?? '').trim()).toBe(partial);
  await expect(answer).toHaveAttribute('data-status', 'stopped');
  await expect(stop).toBeHidden();
  await expect(page.getByTestId('composer-input')).toBeEditable();
  await screenshots(page, 'stop', 'chat');

  // Kept on the device as it was: stopped, with its partial text.
  await page.reload();
  const restored = messages(page, 'assistant').last();
  await expect(restored).toHaveAttribute('data-status', 'stopped', { timeout: 30_000 });
  expect(((await restored.innerText()) ?? '').trim()).toBe(partial);
});
