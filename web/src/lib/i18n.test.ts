import { describe, expect, it } from 'vitest';
import { initialLocale, translate } from '../i18n';

describe('translate', () => {
  it('fills placeholders and falls back to the key for an unknown one', () => {
    expect(translate('fr', 'common.area.chat')).toBe('Discussion');
    expect(translate('nl', 'common.area.chat')).toBe('Gesprek');
    // @ts-expect-error: an unknown key is a type error, and shows as itself at run time
    expect(translate('en', 'common.nope')).toBe('common.nope');
  });

  it('starts in the stored language, else the browser one, else French', () => {
    expect(initialLocale('nl', ['en-GB'])).toBe('nl');
    expect(initialLocale(null, ['de-DE', 'en-US'])).toBe('en');
    expect(initialLocale('xx', ['de-DE'])).toBe('fr');
  });
});
