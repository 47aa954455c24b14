// Scenario 13: a message the gateway refuses (a 4xx other than 429) is marked failed with the
// gateway's reason; retry sends it again with the SAME Idempotency-Key, and it is answered once.
import { expect, test } from '@playwright/test';
import { ANSWER_TIMEOUT, messages, screenshots, sendMessage, signIn, stats } from './support';

test('a refused message fails visibly, and retry resends it with its own idempotency key', async ({ page, request }) => {
  await signIn(page);
  const before = (await stats(request)).total_requests;
  const keys: string[] = [];
  page.on('request', (sent) => {
    if (sent.url().includes('/mcp/v1/chat') && sent.method() === 'POST') keys.push(sent.headers()['idempotency-key'] ?? '');
  });
  // The gateway refuses the first attempt (as it would a request it finds invalid).
  let refused = 0;
  await page.route('**/mcp/v1/chat', async (route) => {
    if (refused > 0) return route.fallback();
    refused += 1;
    await route.fulfill({
      status: 422,
      contentType: 'application/json',
      body: JSON.stringify({ error: 'invalid_request', message: 'refusé pour le test' }),
    });
  });

  await sendMessage(page, 'Quelle est la date de la prochaine assemblée générale ?');
  const question = messages(page, 'user').last();
  await expect(question).toHaveAttribute('data-status', 'failed', { timeout: 30_000 });
  const retry = question.getByTestId('retry-button');
  await expect(retry).toBeVisible();
  // The gateway's own reason is shown.
  await expect(page.getByText('refusé pour le test').first()).toBeVisible();
  await expect(page.getByTestId('outbox-status')).toBeVisible();
  await screenshots(page, 'retry-failed', 'chat');

  await retry.click();
  await expect(question).toHaveAttribute('data-status', 'done', { timeout: ANSWER_TIMEOUT });
  await expect(messages(page, 'assistant').last()).toHaveAttribute('data-status', 'done');
  await expect(retry).toBeHidden();
  expect(keys).toHaveLength(2);
  expect(keys[0]).toMatch(/\S{8,}/);
  expect(keys[1]).toBe(keys[0]);
  await expect.poll(async () => (await stats(request)).total_requests - before, { timeout: 30_000 }).toBe(1);
  await screenshots(page, 'retry-done', 'chat');
});
