// Scenario 2: a chat streams its answer into the page (status streaming, then done) and the
// answer says where it ran (🍓 an edge node here), its latency, tokens and CO₂.
import { expect, test } from '@playwright/test';
import { ANSWER_TIMEOUT, messages, screenshots, sendMessage, signIn } from './support';

test('a chat answer streams in and shows where it ran and its CO₂', async ({ page }) => {
  await signIn(page);
  // Every status the answer's bubble takes and its text's length at each change, seen by the page
  // itself: the bundled model answers in seconds, quicker than a test could poll for it.
  await page.evaluate(() => {
    const seen: { status: string | null; length: number }[] = [];
    (window as unknown as { __answerTrace: typeof seen }).__answerTrace = seen;
    new MutationObserver(() => {
      const answers = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
      const last = answers[answers.length - 1];
      if (!last) return;
      const entry = { status: last.getAttribute('data-status'), length: (last.textContent ?? '').length };
      const previous = seen[seen.length - 1];
      if (!previous || previous.status !== entry.status || previous.length !== entry.length) seen.push(entry);
    }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  });

  // The model picker lists the bundled model among the 🍓 edge ones, available.
  const bundled = page.getByTestId('model-picker').locator('option[value="smollm2:135m-instruct-q4"]');
  await expect(bundled).toBeEnabled();
  const itsGroup = page.getByTestId('model-picker').locator('optgroup', {
    has: page.locator('option[value="smollm2:135m-instruct-q4"]'),
  });
  await expect(itsGroup).toHaveAttribute('label', /🍓/);

  await sendMessage(page, 'Bonjour ! Présente-toi en deux phrases.');
  const question = messages(page, 'user').last();
  await expect(question).toContainText('Présente-toi en deux phrases');
  const answer = messages(page, 'assistant').last();
  await expect(answer).toHaveAttribute('data-status', 'done', { timeout: ANSWER_TIMEOUT });
  await expect(question).toHaveAttribute('data-status', 'done');

  const trace = await page.evaluate(
    () => (window as unknown as { __answerTrace: { status: string | null; length: number }[] }).__answerTrace,
  );
  const streaming = trace.filter((entry) => entry.status === 'streaming');
  expect(streaming.length, `statuses seen: ${JSON.stringify(trace)}`).toBeGreaterThan(0);
  // Streamed: the text grew while the status said streaming, in more than one step.
  expect(new Set(streaming.map((entry) => entry.length)).size, JSON.stringify(trace)).toBeGreaterThan(1);

  const meta = answer.getByTestId('message-meta');
  await expect(meta).toBeVisible();
  await expect(meta).toContainText('🍓');
  await expect(meta).toContainText('CO₂');
  // A figure in grams (g, mg, µg) beside the CO₂.
  await expect(meta).toHaveText(/\d(?:[.,\s\u202f\u00a0]?\d)*\s*(?:µg|mg|g)(?![a-z])/);
  await expect(answer.getByTestId('copy-button')).toBeVisible();
  await screenshots(page, 'chat-stream', 'chat');
});
