/**
 * How the costs panel writes its quantities: grams (kilograms from 1000 g), milliseconds and
 * days, in the page's language (app.svelte.ts's formatNumber, the catalogue's units).
 */
import { INTL_LOCALE } from '../../i18n';
import { app, formatNumber, t } from '../../lib/app.svelte';

/** The unit and decimals a mass of CO₂ reads best in: small amounts need decimals, large and whole ones none. */
export function gramsDisplay(grams: number): { unit: 'g' | 'kg'; value: number; digits: number } {
  const size = Math.abs(grams);
  if (Number.isInteger(grams) && size < 1000) return { unit: 'g', value: grams, digits: 0 };
  if (size >= 1000) return { unit: 'kg', value: grams / 1000, digits: size >= 100_000 ? 0 : 2 };
  if (size === 0 || size >= 100) return { unit: 'g', value: grams, digits: 0 };
  if (size >= 1) return { unit: 'g', value: grams, digits: 1 };
  if (size >= 0.01) return { unit: 'g', value: grams, digits: 3 };
  return { unit: 'g', value: grams, digits: 5 };
}

export function formatGrams(grams: number): string {
  const { unit, value, digits } = gramsDisplay(grams);
  const number = formatNumber(value, digits);
  return unit === 'kg' ? t('stats.units.kilograms', { value: number }) : t('stats.units.grams', { value: number });
}

export function formatMs(ms: number): string {
  return t('stats.units.ms', { value: formatNumber(ms) });
}

/** A UTC day ('YYYY-MM-DD') as the axis writes it: '2 déc.'. */
export function formatDayShort(day: string): string {
  return new Intl.DateTimeFormat(INTL_LOCALE[app.locale], { day: 'numeric', month: 'short', timeZone: 'UTC' }).format(
    Date.parse(day),
  );
}

/** A UTC day ('YYYY-MM-DD') in full, for the table read by screen readers: '2 décembre 2026'. */
export function formatDayLong(day: string): string {
  return new Intl.DateTimeFormat(INTL_LOCALE[app.locale], { dateStyle: 'long', timeZone: 'UTC' }).format(Date.parse(day));
}
