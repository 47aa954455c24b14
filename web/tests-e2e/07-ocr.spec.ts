// Scenario 7: OCR of the fixture invoice as a grid task: progress, then the extracted fields in an
// editable table with their confidence, the total the one printed on the invoice.
import { expect, test } from '@playwright/test';
import {
  GRID_TIMEOUT,
  PHONE,
  expectedInvoice,
  fixture,
  parseLocaleNumber,
  screenshots,
  showArea,
  signIn,
} from './support';

test.use({ viewport: PHONE });

test('the fixture invoice is read by the grid and its total shown', async ({ page }) => {
  test.setTimeout(GRID_TIMEOUT + 60_000);
  const expected = expectedInvoice();
  await signIn(page);
  await showArea(page, 'actions');
  await page.getByTestId('action-ocr').click();
  await page.getByTestId('action-file-input').setInputFiles(fixture('facture-chauffage-F-2025-0142.pdf'));
  await page.getByTestId('action-submit').click();
  await expect(page.getByTestId('action-progress')).toBeVisible();
  const fields = page.getByTestId('ocr-fields');
  await expect(fields).toBeVisible({ timeout: GRID_TIMEOUT });

  const total = fields.locator('[data-field="total_incl_vat"]');
  await expect(total).toBeVisible();
  const totalInput = total.locator('input');
  await expect(totalInput).toBeEditable();
  expect(parseLocaleNumber(await totalInput.inputValue())).toBeCloseTo(Number(expected.total), 2);
  // Its confidence is shown beside it (a percentage or a word, but something).
  await expect(total).toContainText(/\d|%/);
  const number = fields.locator('[data-field="invoice_number"] input');
  await expect(number).toHaveValue(String(expected.invoice_number));
  // Editable: a syndic can correct a field the reader got wrong.
  await number.fill('F-2025-0142-corrigé');
  await expect(number).toHaveValue('F-2025-0142-corrigé');
  await number.fill(String(expected.invoice_number));
  await screenshots(page, 'ocr', 'actions', total);
});
