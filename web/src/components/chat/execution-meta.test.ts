import { beforeEach, describe, expect, it } from 'vitest';
import { app } from '../../lib/app.svelte';
import { gramsText, latencyText } from './execution-meta';

const plain = (text: string) => text.replace(/[\u00a0\u202f]/g, ' ');

beforeEach(() => {
  app.locale = 'fr';
});

describe('gramsText', () => {
  it('writes zero as 0 and keeps the first significant digit of tiny amounts', () => {
    expect(gramsText(0)).toBe('0');
    expect(gramsText(0.0004)).toBe('0,0004');
    expect(gramsText(0.0123)).toBe('0,012');
    expect(gramsText(0.387)).toBe('0,39');
    expect(plain(gramsText(1234.5))).toBe('1 234,50');
  });
});

describe('latencyText', () => {
  it('says milliseconds under a second, else seconds with one decimal', () => {
    expect(latencyText(840.4)).toBe('840 ms');
    expect(latencyText(2345)).toBe('2,3 s');
    app.locale = 'en';
    expect(latencyText(2345)).toBe('2.3 s');
  });
});
