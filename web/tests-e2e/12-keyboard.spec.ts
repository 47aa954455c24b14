// Scenario 12: the page works from the keyboard alone: Tab reaches every control of the chat with a
// visible focus, and Enter in the composer sends.
import { expect, test, type Page } from '@playwright/test';
import { ANSWER_TIMEOUT, PHONE, messages, screenshots, signIn } from './support';

test.use({ viewport: PHONE });

interface Focused {
  testid: string | null;
  tag: string;
  name: string;
  visibleFocus: boolean;
}

/** The element Tab has just focused, and whether its focus shows (an outline or a ring). */
async function focused(page: Page): Promise<Focused> {
  return page.evaluate(() => {
    const element = document.activeElement as HTMLElement | null;
    if (!element || element === document.body) return { testid: null, tag: 'body', name: '', visibleFocus: false };
    const style = getComputedStyle(element);
    const outline = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0;
    const ring = style.boxShadow !== 'none';
    return {
      testid: element.getAttribute('data-testid'),
      tag: element.tagName.toLowerCase(),
      name: (element.getAttribute('aria-label') ?? element.textContent ?? '').trim().slice(0, 40),
      visibleFocus: outline || ring,
    };
  });
}

test('Tab reaches the chat controls with a visible focus, and Enter sends', async ({ page }) => {
  await signIn(page);
  await page.locator('body').click({ position: { x: 1, y: 1 } });
  const seen: Focused[] = [];
  for (let i = 0; i < 80; i += 1) {
    await page.keyboard.press('Tab');
    const now = await focused(page);
    seen.push(now);
    if (now.testid === 'composer-input') break;
  }
  console.log(`Tab order: ${seen.map((f) => `${f.testid ?? `${f.tag} "${f.name}"`}${f.visibleFocus ? '' : ' (no visible focus)'}`).join(' → ')}`);
  const reached = new Set(seen.map((f) => f.testid));
  for (const control of ['language-switch', 'theme-switch', 'sign-out', 'tab-chat', 'model-picker', 'routing-picker', 'composer-input']) {
    expect(reached, `Tab order: ${seen.map((f) => f.testid ?? `${f.tag} "${f.name}"`).join(' → ')}`).toContain(control);
  }
  const hidden = seen.filter((f) => f.tag !== 'body' && !f.visibleFocus);
  expect(hidden, 'focused without a visible outline or ring').toEqual([]);

  // In the composer now: type and press Enter.
  await page.keyboard.type('Bonjour, envoyé au clavier.');
  await page.keyboard.press('Enter');
  await expect(messages(page, 'user').last()).toContainText('Bonjour, envoyé au clavier.');
  await expect(messages(page, 'assistant').last()).toHaveAttribute('data-status', 'done', { timeout: ANSWER_TIMEOUT });
  await expect(page.getByTestId('composer-input')).toHaveValue('');
  await screenshots(page, 'keyboard', 'chat');
});
