/**
 * What every browser spec shares: the stack's coordinates (from tests/web/test_pwa_browser.py),
 * signing in with the dev token, the phone tabs, the gateway's own counters, screenshots.
 * The page is found through the stable data-testids of the contract, never its styling.
 */
import fs from 'node:fs';
import path from 'node:path';
import { expect, type APIRequestContext, type Locator, type Page } from '@playwright/test';

export const PHONE = { width: 360, height: 740 };
export const DESKTOP = { width: 1280, height: 800 };
export const APP_PATH = '/mcp-chat/';

/** A chat answer from the bundled model on two cores: seconds, with room for a loaded machine. */
export const ANSWER_TIMEOUT = 90_000;
/** A grid task (upload, scheduling, the node's work, the one-owner wait of GRID_OWNER_WAIT_S). */
export const GRID_TIMEOUT = 150_000;

export function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run the browser tests through tests/web/test_pwa_browser.py, which starts a stack`);
  }
  return value;
}

/** The dev token of the stack under test (read+write for its demo copro). */
export function devToken(): string {
  return required('KOPROGO_TOKEN');
}

/** A file of the shared test fixtures (the invoice PDF, the charges CSV, expected.json). */
export function fixture(name: string): string {
  const file = path.join(required('KOPROGO_FIXTURES'), name);
  if (!fs.existsSync(file)) throw new Error(`missing fixture ${file}`);
  return file;
}

export function expectedInvoice(): Record<string, string | number> {
  const expected = JSON.parse(fs.readFileSync(fixture('expected.json'), 'utf8')) as Record<string, unknown>;
  return expected['facture-chauffage-F-2025-0142'] as Record<string, string | number>;
}

/** Open the app and sign in by pasting the dev token, as a production user pastes theirs. */
export async function signIn(page: Page): Promise<void> {
  await page.goto(APP_PATH);
  await page.getByTestId('signin-token-input').fill(devToken());
  await page.getByTestId('signin-submit').click();
  await expect(page.getByTestId('sign-out')).toBeVisible({ timeout: 30_000 });
  await showArea(page, 'chat');
  await expect(page.getByTestId('composer-input')).toBeEditable();
}

/** On a phone the three areas are tabs: open `area`'s (a wide screen shows them all). */
export async function showArea(page: Page, area: 'chat' | 'actions' | 'stats'): Promise<void> {
  const tab = page.getByTestId(`tab-${area}`);
  if (await tab.isVisible()) {
    await tab.click();
    await expect(tab).toHaveAttribute('aria-selected', 'true');
  }
}

export function messages(page: Page, role?: 'user' | 'assistant'): Locator {
  return page.locator(role ? `[data-testid="message"][data-role="${role}"]` : '[data-testid="message"]');
}

/** Type `text` in the composer and send it (Enter is the keyboard's way; the button is tested too). */
export async function sendMessage(page: Page, text: string): Promise<void> {
  await page.getByTestId('composer-input').fill(text);
  await page.getByTestId('send-button').click();
}

export interface Stats {
  total_requests: number;
  [field: string]: unknown;
}

/** The gateway's own count of answered requests for the dev token's copro (GET /mcp/v1/stats). */
export async function stats(request: APIRequestContext): Promise<Stats> {
  const response = await request.get('/mcp/v1/stats', { headers: { Authorization: `Bearer ${devToken()}` } });
  expect(response.status(), await response.text()).toBe(200);
  return (await response.json()) as Stats;
}

export function screenshotDir(): string {
  return process.env.KOPROGO_SCREENSHOTS ?? path.resolve('test-results', 'screenshots');
}

/**
 * `<scenario>-360.png` (360×740) and `<scenario>-1280.png` (1280×800) of the page as it is now;
 * on the phone, `area`'s tab first, and `focus` (what the scenario is about) scrolled into view.
 * The viewport the spec ran in is restored afterwards.
 */
export async function screenshots(
  page: Page,
  scenario: string,
  area?: 'chat' | 'actions' | 'stats',
  focus?: Locator,
): Promise<void> {
  const before = page.viewportSize();
  fs.mkdirSync(screenshotDir(), { recursive: true });
  for (const size of [PHONE, DESKTOP]) {
    await page.setViewportSize(size);
    if (area) await showArea(page, area);
    if (focus) await focus.scrollIntoViewIfNeeded();
    // Let the layout and any transition settle at the new width.
    await page.waitForTimeout(300);
    await page.screenshot({ path: path.join(screenshotDir(), `${scenario}-${size.width}.png`) });
  }
  if (before) await page.setViewportSize(before);
  if (area) await showArea(page, area);
}

/** A number as the page writes it in any of its languages ("1 512,50", "1,512.50", "1512.5"). */
export function parseLocaleNumber(text: string): number {
  const cleaned = text.replace(/[^\d,.-]/g, '');
  const lastComma = cleaned.lastIndexOf(',');
  const lastDot = cleaned.lastIndexOf('.');
  const decimal = lastComma > lastDot ? ',' : '.';
  const thousands = decimal === ',' ? '.' : ',';
  return Number(cleaned.split(thousands).join('').replace(decimal, '.'));
}
