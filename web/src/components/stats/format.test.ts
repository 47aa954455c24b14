import { afterEach, describe, expect, it } from 'vitest';
import { app } from '../../lib/app.svelte';
import { formatGrams, gramsDisplay } from './format';

afterEach(() => {
  app.locale = 'fr';
});

describe('gramsDisplay', () => {
  it.each([
    [0, 'g', 0],
    [0.0042, 'g', 5],
    [0.03, 'g', 3],
    [4.56, 'g', 1],
    [5, 'g', 0],
    [250, 'g', 0],
    [1234, 'kg', 2],
    [250_000, 'kg', 0],
  ])('%s g reads in %s with %s decimals', (grams, unit, digits) => {
    expect(gramsDisplay(grams)).toMatchObject({ unit, digits });
  });
});

describe('formatGrams', () => {
  it("writes the page's language", () => {
    app.locale = 'fr';
    expect(formatGrams(0.03).replace(/\s/g, ' ')).toBe('0,030 g');
    app.locale = 'en';
    expect(formatGrams(1234)).toBe('1.23 kg');
  });
});
