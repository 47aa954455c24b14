// Scenario 5: two messages typed offline wait in the outbox, then go out in order once the
// connection returns, and each is answered exactly once: in the page and in the gateway's counts.
import { expect, test } from '@playwright/test';
import { chat } from '../src/i18n/fr/chat';
import { common } from '../src/i18n/fr/common';
import { ANSWER_TIMEOUT, PHONE, messages, screenshots, sendMessage, signIn, stats } from './support';

test.use({ viewport: PHONE });

test('messages typed offline are sent in order once back online, each answered exactly once', async ({
  context,
  page,
  request,
}) => {
  await signIn(page);
  const before = (await stats(request)).total_requests;

  await context.setOffline(true);
  await expect(page.getByTestId('connection-status')).toContainText(common.offline);
  const first = `Premier message hors ligne ${Date.now()}`;
  const second = `Deuxième message hors ligne ${Date.now()}`;
  await sendMessage(page, first);
  await sendMessage(page, second);
  const users = messages(page, 'user');
  await expect(users).toHaveCount(2);
  await expect(users.nth(0)).toHaveAttribute('data-status', 'queued');
  await expect(users.nth(1)).toHaveAttribute('data-status', 'queued');
  const outbox = page.getByTestId('outbox-status');
  await expect(outbox).toBeVisible();
  await expect(outbox).toContainText(chat.outbox.queuedOffline.other.replace('{count}', '2'));
  // Nothing is answered meanwhile.
  await page.waitForTimeout(2_000);
  await expect(page.locator('[data-testid="message"][data-role="assistant"][data-status="done"]')).toHaveCount(0);
  await screenshots(page, 'offline-queue', 'chat');

  await context.setOffline(false);
  await expect(users.nth(0)).toHaveAttribute('data-status', 'done', { timeout: ANSWER_TIMEOUT });
  await expect(users.nth(1)).toHaveAttribute('data-status', 'done', { timeout: ANSWER_TIMEOUT });
  const answers = messages(page, 'assistant');
  await expect(answers).toHaveCount(2);
  await expect(answers.nth(0)).toHaveAttribute('data-status', 'done');
  await expect(answers.nth(1)).toHaveAttribute('data-status', 'done', { timeout: ANSWER_TIMEOUT });
  // In order: question, its answer, question, its answer.
  const roles = await messages(page).evaluateAll((nodes) => nodes.map((n) => n.getAttribute('data-role')));
  expect(roles).toEqual(['user', 'assistant', 'user', 'assistant']);
  await expect(users.nth(0)).toContainText(first);
  await expect(users.nth(1)).toContainText(second);
  // The outbox no longer says anything is waiting (it may also be gone).
  const waiting = [chat.outbox.queuedOffline, chat.outbox.queued].flatMap((texts) => [
    texts.one,
    texts.other.replace('{count}', '2'),
  ]);
  await expect
    .poll(
      async () => {
        const text = (await outbox.count()) ? await outbox.innerText() : '';
        return waiting.filter((phrase) => text.includes(phrase));
      },
      { timeout: 15_000 },
    )
    .toEqual([]);

  // Exactly once on the server: the ledger counted two answered requests, and stays at two.
  await expect.poll(async () => (await stats(request)).total_requests - before, { timeout: 30_000 }).toBe(2);
  await page.waitForTimeout(5_000);
  expect((await stats(request)).total_requests - before).toBe(2);
  await expect(answers).toHaveCount(2);
  await screenshots(page, 'offline-sent', 'chat');
});
