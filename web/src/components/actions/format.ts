// Euros, months and file sizes in the page's language (fr-BE, en-GB, nl-BE).
import { INTL_LOCALE, type Locale } from '../../i18n';

export function formatEuro(value: number, locale: Locale, currency = 'EUR', digits = 2): string {
  const options = { style: 'currency', currency, minimumFractionDigits: digits, maximumFractionDigits: digits } as const;
  try {
    return new Intl.NumberFormat(INTL_LOCALE[locale], options).format(value);
  } catch {
    // A currency code the browser does not know (an OCR misread): show the number and the code.
    return `${new Intl.NumberFormat(INTL_LOCALE[locale], { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(value)} ${currency}`;
  }
}

/** `2025-03` as "mars 2025" (style long) or "mars" (short, without the year). */
export function formatMonth(month: string, locale: Locale, style: 'long' | 'short' = 'long'): string {
  const [year, number] = month.split('-').map(Number);
  const date = new Date(Date.UTC(year, number - 1, 1));
  const options: Intl.DateTimeFormatOptions =
    style === 'long' ? { month: 'long', year: 'numeric', timeZone: 'UTC' } : { month: 'short', timeZone: 'UTC' };
  return new Intl.DateTimeFormat(INTL_LOCALE[locale], options).format(date);
}

export function formatSize(bytes: number, locale: Locale): string {
  const units = ['B', 'kB', 'MB', 'GB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) (value /= 1000), unit++;
  return `${new Intl.NumberFormat(INTL_LOCALE[locale], { maximumFractionDigits: unit ? 1 : 0 }).format(value)} ${units[unit]}`;
}
