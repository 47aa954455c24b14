/**
 * The message catalogues: French (the default), English and Dutch. Every string the page shows
 * comes from here, none from a component. One file per area and language (common, chat,
 * actions, stats), French being the reference: the English and Dutch files are typed against
 * it, so a missing key is a type error (`npm run check`), not a blank on the page.
 *
 * Plain typed modules rather than an i18n library: the catalogues are small, the type check
 * of every key in every language is what matters, and nothing is fetched at run time.
 */
import { en } from './en';
import { fr } from './fr';
import { nl } from './nl';

export const LOCALES = ['fr', 'en', 'nl'] as const;
export type Locale = (typeof LOCALES)[number];
export const DEFAULT_LOCALE: Locale = 'fr';

type Leaves<T, P extends string = ''> = {
  [K in keyof T & string]: T[K] extends string ? `${P}${K}` : Leaves<T[K], `${P}${K}.`>;
}[keyof T & string];

export type Catalogue = typeof fr;
export type MessageKey = Leaves<Catalogue>;
/** A catalogue with the same keys as French, every value a string. */
export type Translation<T> = { [K in keyof T]: T[K] extends string ? string : Translation<T[K]> };

const CATALOGUES: Record<Locale, Translation<Catalogue>> = { fr, en, nl };

export function isLocale(value: unknown): value is Locale {
  return typeof value === 'string' && (LOCALES as readonly string[]).includes(value);
}

/** The locale to start with: the stored choice, else the browser's first supported language, else French. */
export function initialLocale(stored: string | null, languages: readonly string[]): Locale {
  if (isLocale(stored)) return stored;
  for (const language of languages) {
    const base = language.toLowerCase().split('-')[0];
    if (isLocale(base)) return base;
  }
  return DEFAULT_LOCALE;
}

/** `key` in `locale`, with `{name}` placeholders filled from `params`. */
export function translate(locale: Locale, key: MessageKey, params: Record<string, string | number> = {}): string {
  let node: unknown = CATALOGUES[locale];
  for (const part of key.split('.')) node = (node as Record<string, unknown> | undefined)?.[part];
  if (typeof node !== 'string') return key;
  return node.replace(/\{(\w+)\}/g, (whole, name: string) => (name in params ? String(params[name]) : whole));
}

/** Numbers, grams and dates in the locale's own format (fr-BE, en-GB, nl-BE). */
export const INTL_LOCALE: Record<Locale, string> = { fr: 'fr-BE', en: 'en-GB', nl: 'nl-BE' };
