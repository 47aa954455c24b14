import { describe, expect, it } from 'vitest';
import { decodeClaims, isExpired, readToken, TokenError } from './jwt';
import { b64url, fakeJwt } from './jwt.fixtures';

const NOW_MS = Date.UTC(2026, 11, 2, 9, 0, 0);
const IN_AN_HOUR = NOW_MS / 1000 + 3600;

function codeOf(run: () => unknown): string | undefined {
  try {
    run();
  } catch (error) {
    return error instanceof TokenError ? error.code : `not a TokenError: ${String(error)}`;
  }
  return undefined;
}

describe('decodeClaims', () => {
  it('reads sub, copros, scope, exp and nodes, accented names included', () => {
    const token = fakeJwt({
      sub: 'élise-dupré',
      copros: ['00000000-0000-4000-8000-00000000de00', 'c2'],
      scope: 'mcp:read mcp:write',
      exp: IN_AN_HOUR,
      nodes: ['pi-1'],
      iss: 'koprogo',
    });
    expect(decodeClaims(token)).toEqual({
      sub: 'élise-dupré',
      copros: ['00000000-0000-4000-8000-00000000de00', 'c2'],
      scope: 'mcp:read mcp:write',
      exp: IN_AN_HOUR,
      nodes: ['pi-1'],
    });
  });

  it('takes absent copros and scope as none, as the gateway does', () => {
    expect(decodeClaims(fakeJwt({ sub: 'admin', exp: IN_AN_HOUR }))).toEqual({
      sub: 'admin',
      copros: [],
      scope: '',
      exp: IN_AN_HOUR,
    });
  });

  it('tolerates surrounding whitespace from a paste', () => {
    expect(decodeClaims(`\n  ${fakeJwt({ sub: 'u', exp: IN_AN_HOUR })}  \n`).sub).toBe('u');
  });

  it.each([
    ['an empty string', ''],
    ['two parts', 'abc.def'],
    ['an empty payload', 'abc..def'],
    ['a payload that is not base64url', 'abc.*&^.def'],
    ['a payload that is not JSON', `abc.${b64url('not json')}.def`],
    ['a JSON array', fakeJwt([1, 2])],
    ['no sub', fakeJwt({ copros: [], scope: '', exp: IN_AN_HOUR })],
    ['an empty sub', fakeJwt({ sub: '', exp: IN_AN_HOUR })],
    ['no exp', fakeJwt({ sub: 'u', copros: [] })],
    ['a text exp', fakeJwt({ sub: 'u', exp: '2026-12-31' })],
    ['copros not a list', fakeJwt({ sub: 'u', copros: 'c1', exp: IN_AN_HOUR })],
    ['a copro that is not a string', fakeJwt({ sub: 'u', copros: ['c1', 2], exp: IN_AN_HOUR })],
    ['a list scope', fakeJwt({ sub: 'u', scope: ['mcp:read'], exp: IN_AN_HOUR })],
    ['nodes not a list', fakeJwt({ sub: 'u', exp: IN_AN_HOUR, nodes: 'n' })],
  ])('refuses %s as token_malformed', (_name, token) => {
    expect(codeOf(() => decodeClaims(token))).toBe('token_malformed');
  });
});

describe('readToken', () => {
  it('accepts a token valid at the given time', () => {
    expect(readToken(fakeJwt({ sub: 'u', exp: IN_AN_HOUR }), NOW_MS).sub).toBe('u');
  });

  it('refuses an expired token as token_expired, and one expiring exactly now', () => {
    expect(codeOf(() => readToken(fakeJwt({ sub: 'u', exp: NOW_MS / 1000 - 1 }), NOW_MS))).toBe('token_expired');
    expect(codeOf(() => readToken(fakeJwt({ sub: 'u', exp: NOW_MS / 1000 }), NOW_MS))).toBe('token_expired');
    expect(isExpired({ sub: 'u', copros: [], scope: '', exp: NOW_MS / 1000 + 1 }, NOW_MS)).toBe(false);
  });

  it('says malformed before expired', () => {
    expect(codeOf(() => readToken('garbage', NOW_MS))).toBe('token_malformed');
  });
});
