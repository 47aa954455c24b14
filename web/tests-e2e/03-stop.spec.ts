// Scenario 3: the stop button cancels a long answer at the gateway (POST /mcp/v1/chat/cancel answers
// `cancelled`); the bubble says stopped and keeps what came, also after a reload.
import { expect, test } from '@playwright/test';
import { chat } from '../src/i18n/fr/chat';
import { ANSWER_TIMEOUT, PHONE, messages, screenshots, sendMessage, signIn } from './support';

test.use({ viewport: PHONE });

// The bundled 135M model writes its longest answers (to the 256-token cap, 2-4 s on two cores) for
// a story asked in English; in French it stops after a sentence or two.
// A bubble's time, as the page writes it ("2/12/26 09:55").
const TIME = String.raw`\d{1,2}/\d{1,2}/\d{2,4},?\s+\d{1,2}:\d{2}`;
const LONG_QUESTION =
  'Write a very long story about an old apartment building in Brussels, at least 2000 words, in many chapters.';

test('stop cancels a long answer and keeps its partial text', async ({ page }) => {
  await signIn(page);
  await sendMessage(page, LONG_QUESTION);
  const answer = messages(page, 'assistant').last();
  const stop = page.getByTestId('stop-button');
  // The bubble's own words (its time, status and buttons set aside): some must have arrived first.
  const labels = [chat.status.streaming, chat.status.stopped, chat.message.thinking, chat.message.copy, chat.message.retry];
  const wordsOf = (text: string) =>
    labels.reduce((rest, label) => rest.split(label).join(' '), text).replace(new RegExp(TIME, 'g'), ' ');
  // Watched in the page itself at every frame: the whole answer takes 2-4 s.
  await page.waitForFunction(
    ({ labelList, time }) => {
      const answers = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
      const last = answers[answers.length - 1] as HTMLElement | undefined;
      if (!last || last.getAttribute('data-status') !== 'streaming') return false;
      const rest = labelList.reduce((text, label) => text.split(label).join(' '), last.innerText);
      return /[A-Za-z]{2,}\W+[A-Za-z]{2,}/.test(rest.replace(new RegExp(time, 'g'), ' '));
    },
    { labelList: labels, time: TIME },
    { timeout: ANSWER_TIMEOUT, polling: 'raf' },
  );
  // Stop also asks the gateway to cancel the chat (a keyed chat runs on when its caller leaves).
  const cancelled = page.waitForResponse(
    (response) => response.url().endsWith('/mcp/v1/chat/cancel') && response.request().method() === 'POST',
    { timeout: 15_000 },
  );
  await stop.click();
  const cancel = await cancelled;
  expect(cancel.status()).toBe(200);
  expect(await cancel.json(), 'the gateway stopped the generation').toEqual({ status: 'cancelled' });
  await expect(answer, 'the answer ended before the stop took effect').toHaveAttribute('data-status', 'stopped', {
    timeout: 15_000,
  });
  const partial = ((await answer.innerText()) ?? '').trim();
  expect(wordsOf(partial), partial).toMatch(/[A-Za-z]{2,}\W+[A-Za-z]{2,}/);
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
