import { defineConfig, devices } from '@playwright/test';

// Browser tests against a running stack (KOPROGO_URL; tests/web/test_pwa_browser.py starts one
// and passes KOPROGO_URL and KOPROGO_LOGIN_URL). Debian's chromium, never a downloaded browser.
export default defineConfig({
  testDir: './tests-e2e',
  outputDir: './test-results',
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
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    },
  },
  projects: [{ name: 'chromium', use: { ...devices['Desktop Chrome'], channel: undefined } }],
});
