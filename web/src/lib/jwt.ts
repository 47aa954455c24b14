/**
 * Reading a bearer token's claims on the page: base64url-decode the JWT's payload and check its
 * shape. No signature check: the page holds no key, and the gateway verifies every request.
 * The claims only decide what the page shows (the copro picker, the user's name, when the
 * session ends), never what the user may do.
 *
 * The shape rules are the gateway's own (adapters/jwt_verifier.py): `sub` a non-empty string,
 * `exp` a number of seconds, `copros` and `nodes` lists of ids (absent means none), `scope` a
 * space-separated string (absent means no scope).
 */
import type { Claims } from './app.svelte';

export type TokenErrorCode = 'token_malformed' | 'token_expired';

export class TokenError extends Error {
  constructor(
    readonly code: TokenErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'TokenError';
  }
}

function base64UrlDecode(segment: string): string {
  if (!/^[A-Za-z0-9_-]*$/.test(segment)) throw new TokenError('token_malformed', 'the payload is not base64url');
  const base64 = segment.replace(/-/g, '+').replace(/_/g, '/');
  const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
  let binary: string;
  try {
    binary = atob(padded);
  } catch {
    throw new TokenError('token_malformed', 'the payload is not base64url');
  }
  const bytes = Uint8Array.from(binary, (char) => char.charCodeAt(0));
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new TokenError('token_malformed', 'the payload is not UTF-8');
  }
}

function isIdList(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((item) => typeof item === 'string' && item.length > 0);
}

/** The token's claims, shape-checked; TokenError('token_malformed') when it is not a JWT we can read. */
export function decodeClaims(token: string): Claims {
  const parts = token.trim().split('.');
  if (parts.length !== 3 || parts.some((part) => part.length === 0)) {
    throw new TokenError('token_malformed', 'a token has three dot-separated parts');
  }
  let payload: unknown;
  try {
    payload = JSON.parse(base64UrlDecode(parts[1]));
  } catch (error) {
    if (error instanceof TokenError) throw error;
    throw new TokenError('token_malformed', 'the payload is not JSON');
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    throw new TokenError('token_malformed', 'the payload is not a JSON object');
  }
  const { sub, exp, copros = [], scope = '', nodes } = payload as Record<string, unknown>;
  if (typeof sub !== 'string' || sub.length === 0) throw new TokenError('token_malformed', "'sub' must be a non-empty string");
  if (typeof exp !== 'number' || !Number.isFinite(exp)) throw new TokenError('token_malformed', "'exp' must be a number");
  if (!isIdList(copros)) throw new TokenError('token_malformed', "'copros' must be a list of copro ids");
  if (typeof scope !== 'string') throw new TokenError('token_malformed', "'scope' must be a string");
  if (nodes !== undefined && !isIdList(nodes)) throw new TokenError('token_malformed', "'nodes' must be a list of node ids");
  const claims: Claims = { sub, exp, copros: [...new Set(copros)], scope };
  if (nodes !== undefined) claims.nodes = nodes;
  return claims;
}

/** Whether the claims' `exp` (seconds) is past at `nowMs`. */
export function isExpired(claims: Claims, nowMs: number = Date.now()): boolean {
  return claims.exp * 1000 <= nowMs;
}

/** The claims of a token still valid at `nowMs`; TokenError('token_expired') for an expired one. */
export function readToken(token: string, nowMs: number = Date.now()): Claims {
  const claims = decodeClaims(token);
  if (isExpired(claims, nowMs)) throw new TokenError('token_expired', 'the token has expired');
  return claims;
}
