/**
 * The session: who is signed in, kept across reloads in IndexedDB (store `session`, key
 * 'current'), never in localStorage and never in a URL.
 *
 * Two ways in: a one-time sign-in link (`#login=<code>`, printed by `koprogo up` in a dev stack)
 * exchanged at POST /mcp/v1/session/exchange for a token, or a token pasted on the sign-in form
 * (from the syndic's or operator's KoproGo sign-in), checked against the gateway first. The
 * token's claims are read, not verified (lib/jwt.ts): the gateway verifies every request, and a
 * 401 from it ends the session (`expireSession`, called by apiFetch).
 *
 * Errors carry a code (SessionErrorCode) the sign-in form turns into words; a failure that
 * happens before the form is shown (a used link, a session that ended) is kept as the form's
 * notice (`takeSignInNotice`).
 *
 * Tabs of the page share one session: a sign-in, sign-out or expiry in one is announced on a
 * BroadcastChannel, and the others take the stored session as it now is (a user who signs out
 * on a shared device is signed out of every tab).
 */
import { app, type Claims } from './app.svelte';
import { forgetHistoryOf, openDb } from './db';
import { ApiError, apiFetch, NetworkError } from './http';
import { readToken, TokenError } from './jwt';

export type SessionErrorCode =
  | 'token_malformed'
  | 'token_expired'
  | 'token_invalid'
  | 'token_forbidden'
  | 'invalid_login_link'
  | 'login_link_expired'
  | 'login_link_used'
  | 'login_links_disabled'
  | 'gateway_unreachable'
  | 'gateway_error'
  | 'session_expired';

export class SessionError extends Error {
  constructor(
    readonly code: SessionErrorCode,
    message: string = code,
  ) {
    super(message);
    this.name = 'SessionError';
  }
}

/** What the `session` store holds under 'current'. */
export interface StoredSession {
  token: string;
  claims: Claims;
}

const SESSION_STORE = 'session';
const SESSION_KEY = 'current';
/** The last copro chosen: not a secret (an id the token names), so localStorage is fine. */
const COPRO_KEY = 'koprogo.copro';
const LOGIN_LINK_CODES = ['invalid_login_link', 'login_link_expired', 'login_link_used', 'login_links_disabled'] as const;
// setTimeout's longest delay (about 24.8 days); a later expiry is re-armed when it fires.
const MAX_TIMER_MS = 2 ** 31 - 1;

const CHANNEL_NAME = 'koprogo.session';

type SessionChange = 'signed_in' | 'signed_out' | 'expired';

let notice: SessionErrorCode | null = null;
let expiryTimer: ReturnType<typeof setTimeout> | undefined;
let channel: BroadcastChannel | null = null;

/** The reason the sign-in form is shown (a failed link, a session that ended), once; null when none. */
export function takeSignInNotice(): SessionErrorCode | null {
  const taken = notice;
  notice = null;
  return taken;
}

/**
 * At start: a `#login=<code>` fragment is dropped from the URL at once and exchanged for a
 * token; otherwise (or when the exchange fails) the stored session comes back unless expired.
 * Never throws: what went wrong becomes the sign-in form's notice.
 */
export async function restoreSession(): Promise<void> {
  listenToOtherTabs();
  const code = takeLoginCode();
  if (code !== null) {
    try {
      const token = await exchangeLoginCode(code);
      await establish(token, readToken(token));
      return;
    } catch (error) {
      notice = sessionErrorCode(error);
    }
  }
  await restoreStored();
}

/**
 * Sign in with what was pasted on the form: a token (readable, not expired, and accepted by the
 * gateway), or a whole sign-in link (its code is exchanged, as when the link is opened);
 * SessionError otherwise.
 */
export async function signIn(pasted: string): Promise<void> {
  const text = pasted.trim();
  const linkCode = loginCodeIn(text);
  if (linkCode !== null) {
    try {
      const token = await exchangeLoginCode(linkCode);
      await establish(token, readToken(token));
    } catch (error) {
      throw new SessionError(sessionErrorCode(error));
    }
    return;
  }
  let claims: Claims;
  try {
    claims = readToken(text);
  } catch (error) {
    throw new SessionError(sessionErrorCode(error));
  }
  try {
    await apiFetch('/mcp/v1/models', {}, text);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) throw new SessionError('token_invalid', error.message);
    if (error instanceof ApiError && error.status === 403) throw new SessionError('token_forbidden', error.message);
    // Rate-limited, a server error: the token could not be checked, not found wrong.
    throw new SessionError(error instanceof NetworkError ? 'gateway_unreachable' : 'gateway_error');
  }
  await establish(text, claims);
}

/** Sign out on this device: the stored token and the page's session are forgotten. */
export async function signOut(): Promise<void> {
  notice = null;
  // A shared device: the user's conversations leave with them (not when a session merely expires).
  const user = app.claims?.sub;
  if (user) await forgetHistoryOf(user).catch((error: unknown) => console.warn('could not forget the history', error));
  await endSession();
  announce('signed_out');
}

/**
 * The gateway refused the token (401) or it expired: back to the sign-in form, which says so.
 * `token`: the token the refused call carried; a refusal of another token (the form's check of
 * a pasted one) leaves the current session alone.
 */
export function expireSession(token?: string | null): void {
  if (app.token === null || (token != null && token !== app.token)) return;
  notice = 'session_expired';
  void endSession().then(() => announce('expired'));
}

/** Select one of the token's copros and remember the choice on this device. */
export function chooseCopro(copro: string): void {
  if (!app.claims?.copros.includes(copro)) return;
  app.copro = copro;
  try {
    localStorage.setItem(COPRO_KEY, copro);
  } catch {
    // Storage refused (private mode): the choice holds until the page reloads.
  }
}

/** A copro id short enough for a header: '00000000…de00' (there is no name API); short ids as they are. */
export function shortCoproId(copro: string): string {
  return copro.length > 14 ? `${copro.slice(0, 8)}…${copro.slice(-4)}` : copro;
}

/** The code of a `…#login=<code>` link or fragment; null when there is none. */
function loginCodeIn(text: string): string | null {
  const hash = text.indexOf('#');
  if (hash < 0) return null;
  const code = new URLSearchParams(text.slice(hash + 1)).get('login');
  return code === null || code === '' ? null : code;
}

function takeLoginCode(): string | null {
  const code = loginCodeIn(location.hash);
  if (code === null) return null;
  // The code must not stay in the address bar, the history or a bookmark, even for a moment.
  history.replaceState(history.state, '', `${location.pathname}${location.search}`);
  return code;
}

async function exchangeLoginCode(code: string): Promise<string> {
  const response = await apiFetch(
    '/mcp/v1/session/exchange',
    { method: 'POST', body: JSON.stringify({ code }) },
    null,
  );
  const body = (await response.json()) as { token?: unknown };
  if (typeof body.token !== 'string') throw new SessionError('gateway_error', 'the exchange answered without a token');
  return body.token;
}

function sessionErrorCode(error: unknown): SessionErrorCode {
  if (error instanceof SessionError) return error.code;
  if (error instanceof TokenError) return error.code;
  if (error instanceof NetworkError) return 'gateway_unreachable';
  if (error instanceof ApiError) {
    const known = LOGIN_LINK_CODES.find((code) => code === error.code);
    if (known) return known;
    if (error.status === 409 || error.status === 410) return 'login_link_used';
    if (error.status === 404) return 'login_links_disabled';
    if (error.status === 401 || error.status === 422) return 'invalid_login_link';
    return 'gateway_error';
  }
  return 'gateway_error';
}

async function readStored(): Promise<StoredSession | undefined> {
  const db = await openDb();
  const stored = (await db.get(SESSION_STORE, SESSION_KEY)) as StoredSession | undefined;
  return stored && typeof stored.token === 'string' ? stored : undefined;
}

async function restoreStored(): Promise<void> {
  let stored: StoredSession | undefined;
  try {
    stored = await readStored();
  } catch (error) {
    console.warn('the stored session cannot be read', error);
    return;
  }
  if (!stored) {
    await forgetStored();
    return;
  }
  let claims: Claims;
  try {
    // The claims are read again from the token, not trusted from the store.
    claims = readToken(stored.token);
  } catch (error) {
    if (error instanceof TokenError && error.code === 'token_expired') notice ??= 'session_expired';
    await forgetStored();
    return;
  }
  apply(stored.token, claims);
}

async function establish(token: string, claims: Claims): Promise<void> {
  try {
    const db = await openDb();
    await db.put(SESSION_STORE, { token, claims } satisfies StoredSession, SESSION_KEY);
  } catch (error) {
    // Signed in for this page anyway; only a reload will ask again.
    console.warn('the session cannot be stored on this device', error);
  }
  apply(token, claims);
  announce('signed_in');
}

function apply(token: string, claims: Claims): void {
  notice = null;
  app.claims = claims;
  app.copro = rememberedCopro(claims);
  app.token = token;
  armExpiry(token, claims);
}

function rememberedCopro(claims: Claims): string | null {
  let remembered: string | null = null;
  try {
    remembered = localStorage.getItem(COPRO_KEY);
  } catch {
    // Storage refused: the first copro.
  }
  if (remembered !== null && claims.copros.includes(remembered)) return remembered;
  return claims.copros[0] ?? null;
}

function armExpiry(token: string, claims: Claims): void {
  clearTimeout(expiryTimer);
  const left = claims.exp * 1000 - Date.now();
  expiryTimer = setTimeout(
    () => (left > MAX_TIMER_MS ? armExpiry(token, claims) : expireSession(token)),
    Math.max(0, Math.min(left, MAX_TIMER_MS)),
  );
}

function clearPage(): void {
  clearTimeout(expiryTimer);
  app.token = null;
  app.claims = null;
  app.copro = null;
}

async function endSession(): Promise<void> {
  clearPage();
  await forgetStored();
}

function listenToOtherTabs(): void {
  if (channel !== null || typeof BroadcastChannel === 'undefined') return;
  channel = new BroadcastChannel(CHANNEL_NAME);
  channel.onmessage = (event: MessageEvent<unknown>) => void followOtherTab(event.data);
}

function announce(change: SessionChange): void {
  channel?.postMessage(change);
}

/** Another tab signed in, out, or saw the session end: take the stored session as it now is. */
async function followOtherTab(change: unknown): Promise<void> {
  let stored: StoredSession | undefined;
  try {
    stored = await readStored();
  } catch (error) {
    console.warn('the stored session cannot be read', error);
    return;
  }
  if (!stored) {
    if (app.token === null) return;
    notice = change === 'expired' ? 'session_expired' : null;
    clearPage();
    return;
  }
  if (stored.token === app.token) return;
  try {
    apply(stored.token, readToken(stored.token));
  } catch {
    // Expired or unreadable: the tab that stored it will find out; this one stays as it is.
  }
}

async function forgetStored(): Promise<void> {
  try {
    const db = await openDb();
    await db.delete(SESSION_STORE, SESSION_KEY);
  } catch (error) {
    console.warn('the stored session cannot be removed', error);
  }
}
