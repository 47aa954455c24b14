import { defineConfig, devices } from '@playwright/test';

// Browser tests against a running stack: tests/web/test_pwa_browser.py starts one (`koprogo up` on
// a data folder of its own) and passes KOPROGO_URL, KOPROGO_TOKEN, KOPROGO_LOGIN_URL and
// KOPROGO_FIXTURES. Debian's chromium, never a downloaded browser. Screenshots go to
// test-results/screenshots (kept across runs of single specs); Playwright's own output, which it
// empties at each run, to test-results/playwright.
export default defineConfig({
  testDir: './tests-e2e',
  outputDir: './test-results/playwright',
  timeout: 120_000,
  expect: { timeout: 30_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [['list']],
  use: {
    baseURL: process.env.KOPROGO_URL ?? 'http://127.0.0.1:8080',
    locale: 'fr-BE',
    trace: 'off',
    screenshot: 'only-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      // --lang: the browser's own words (a file input's button) in French, as a Belgian user's browser.
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--lang=fr-BE',
      ],
    },
  },
  projects: [
    {
      name: 'chromium',
      use: { ...devices['Desktop Chrome'], channel: undefined, viewport: { width: 1280, height: 800 } },
    },
  ],
});
