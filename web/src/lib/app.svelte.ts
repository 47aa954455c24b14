/**
 * The page's shared state, as Svelte 5 runes: who is signed in, which copro is selected, the
 * language, the theme, whether the browser is online and whether the gateway's building reaches
 * the hub (lib/site-link.ts). Components read it; the few functions below change it. Persistence
 * (IndexedDB, localStorage) lives in the modules that own it.
 */
import { DEFAULT_LOCALE, INTL_LOCALE, translate, type Locale, type MessageKey } from '../i18n';

/** The claims of the bearer token the page shows (the gateway checks them; this only displays). */
export interface Claims {
  sub: string;
  copros: string[];
  scope: string;
  exp: number;
  nodes?: string[];
}

export type Theme = 'system' | 'light' | 'dark';

/** The gateway's site's link to the hub (`GET /mcp/v1/site`); a hub gateway is always `up`. */
export type HubLink = 'up' | 'down' | 'unknown';

export const app = $state({
  token: null as string | null,
  claims: null as Claims | null,
  /** The selected copro's id (one of `claims.copros`), or null when the token has none. */
  copro: null as string | null,
  locale: DEFAULT_LOCALE as Locale,
  theme: 'system' as Theme,
  online: typeof navigator === 'undefined' ? true : navigator.onLine,
  hubLink: 'unknown' as HubLink,
});

/** `key` in the page's language; reactive in components because it reads `app.locale`. */
export function t(key: MessageKey, params?: Record<string, string | number>): string {
  return translate(app.locale, key, params);
}

/** A number in the page's language (grams, tokens, milliseconds). */
export function formatNumber(value: number, digits = 0): string {
  return new Intl.NumberFormat(INTL_LOCALE[app.locale], {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  }).format(value);
}

/** A date and time in the page's language. */
export function formatDateTime(value: Date | string | number): string {
  return new Intl.DateTimeFormat(INTL_LOCALE[app.locale], { dateStyle: 'short', timeStyle: 'short' }).format(
    new Date(value),
  );
}
