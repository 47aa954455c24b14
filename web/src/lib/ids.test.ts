import { afterEach, describe, expect, it, vi } from 'vitest';
import { newId } from './ids';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('newId', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('is a uuid v4, different each time', () => {
    const ids = new Set(Array.from({ length: 100 }, newId));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(id).toMatch(UUID_V4);
  });

  it('builds a uuid v4 from getRandomValues where randomUUID is missing (plain http)', () => {
    const real = globalThis.crypto;
    vi.stubGlobal('crypto', { getRandomValues: (a: Uint8Array) => real.getRandomValues(a) });
    const a = newId();
    const b = newId();
    expect(a).toMatch(UUID_V4);
    expect(a).not.toBe(b);
  });

  it('refuses without Web Crypto rather than make guessable keys', () => {
    vi.stubGlobal('crypto', undefined);
    expect(() => newId()).toThrow(/Web Crypto/);
  });
});
