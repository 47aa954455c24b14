/**
 * The language and theme: restored from localStorage (they are not secrets, and must be known
 * before IndexedDB answers, so the page never flashes in the wrong language or colours), applied
 * to <html lang> and <html data-theme>, and saved when they change.
 */
import { initialLocale, isLocale } from '../i18n';
import { app, type Theme } from './app.svelte';

const LOCALE_KEY = 'koprogo.locale';
const THEME_KEY = 'koprogo.theme';

function isTheme(value: unknown): value is Theme {
  return value === 'system' || value === 'light' || value === 'dark';
}

/** Restores and applies the preferences, and keeps applying them; returns the stop function. */
export function startPreferences(): () => void {
  app.locale = initialLocale(localStorage.getItem(LOCALE_KEY), navigator.languages ?? [navigator.language]);
  const storedTheme = localStorage.getItem(THEME_KEY);
  app.theme = isTheme(storedTheme) ? storedTheme : 'system';
  const dark = window.matchMedia('(prefers-color-scheme: dark)');
  const apply = () => {
    document.documentElement.lang = app.locale;
    const theme = app.theme === 'system' ? (dark.matches ? 'dark' : 'light') : app.theme;
    document.documentElement.dataset.theme = theme;
  };
  const stopEffect = $effect.root(() => {
    $effect(() => {
      if (isLocale(app.locale)) localStorage.setItem(LOCALE_KEY, app.locale);
      localStorage.setItem(THEME_KEY, app.theme);
      apply();
    });
  });
  dark.addEventListener('change', apply);
  return () => {
    stopEffect();
    dark.removeEventListener('change', apply);
  };
}
