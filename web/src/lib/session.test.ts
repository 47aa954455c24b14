// The session through its public functions, with fetch stubbed at the network boundary and a
// real (fake-indexeddb) IndexedDB behind lib/db.ts.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { app } from './app.svelte';
import { listMessages, openDb, putMessage } from './db';
import { fakeJwt } from './jwt.fixtures';
import { expireSession, restoreSession, SessionError, signIn, signOut, takeSignInNotice } from './session';

const COPRO_A = '00000000-0000-4000-8000-00000000de00';
const COPRO_B = '00000000-0000-4000-8000-00000000be11';

function tokenFor(overrides: Record<string, unknown> = {}): string {
  return fakeJwt({
    sub: 'dev-user',
    copros: [COPRO_A, COPRO_B],
    scope: 'mcp:read mcp:write',
    exp: Math.floor(Date.now() / 1000) + 3600,
    ...overrides,
  });
}

interface Call {
  url: string;
  method: string;
  authorization: string | null;
  body: unknown;
  hashAtCall: string;
}

let calls: Call[] = [];

/** Stubs fetch: each call is recorded and answered by `answer` (a Response, or a thrown error). */
function stubNetwork(answer: (url: string) => Response | Error): void {
  vi.stubGlobal(
    'fetch',
    vi.fn(async (input: RequestInfo | URL, init: RequestInit = {}) => {
      const url = String(input);
      calls.push({
        url,
        method: init.method ?? 'GET',
        authorization: new Headers(init.headers).get('Authorization'),
        body: typeof init.body === 'string' ? JSON.parse(init.body) : null,
        hashAtCall: location.hash,
      });
      const result = answer(url);
      if (result instanceof Error) throw result;
      return result;
    }),
  );
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

async function stored(): Promise<unknown> {
  return (await openDb()).get('session', 'current');
}

async function signInError(run: () => Promise<unknown>): Promise<string> {
  try {
    await run();
  } catch (error) {
    return error instanceof SessionError ? error.code : `not a SessionError: ${String(error)}`;
  }
  return 'no error';
}

beforeEach(async () => {
  calls = [];
  await signOut();
  takeSignInNotice();
  localStorage.clear();
  history.replaceState(null, '', '/mcp-chat/');
});

afterEach(async () => {
  vi.unstubAllGlobals();
  await signOut();
});

describe('restoreSession from a sign-in link', () => {
  it('drops the code from the URL before exchanging it, then signs in with the token', async () => {
    const token = tokenFor();
    history.replaceState(null, '', '/mcp-chat/?pwa=1#login=the.login-code_1');
    stubNetwork(() => json(200, { token, expires_at: '2026-12-02T10:00:00Z' }));

    await restoreSession();

    expect(calls).toHaveLength(1);
    expect(calls[0]).toEqual({
      url: '/mcp/v1/session/exchange',
      method: 'POST',
      authorization: null,
      body: { code: 'the.login-code_1' },
      hashAtCall: '',
    });
    expect(location.href).not.toContain('login');
    expect(location.pathname + location.search).toBe('/mcp-chat/?pwa=1');
    expect(app.token).toBe(token);
    expect(app.claims?.sub).toBe('dev-user');
    expect(app.copro).toBe(COPRO_A);
    expect(await stored()).toEqual({ token, claims: app.claims ? { ...app.claims } : null });
    expect(takeSignInNotice()).toBeNull();
  });

  it.each([
    [409, { error: 'login_link_used', message: 'used' }, 'login_link_used'],
    [410, {}, 'login_link_used'],
    [401, { error: 'login_link_expired', message: 'expired' }, 'login_link_expired'],
    [401, { error: 'invalid_login_link', message: 'bad' }, 'invalid_login_link'],
    [404, { error: 'login_links_disabled', message: 'off' }, 'login_links_disabled'],
    [503, { error: 'login_links_unavailable', message: 'kv down' }, 'gateway_error'],
  ])('a %s answer keeps no token and tells the form why', async (status, body, code) => {
    history.replaceState(null, '', '/mcp-chat/#login=abc');
    stubNetwork(() => json(status, body));

    await restoreSession();

    expect(location.hash).toBe('');
    expect(app.token).toBeNull();
    expect(await stored()).toBeUndefined();
    expect(takeSignInNotice()).toBe(code);
    expect(takeSignInNotice()).toBeNull();
  });

  it('says the gateway is unreachable when the exchange cannot be sent', async () => {
    history.replaceState(null, '', '/mcp-chat/#login=abc');
    stubNetwork(() => new TypeError('Failed to fetch'));

    await restoreSession();

    expect(location.hash).toBe('');
    expect(app.token).toBeNull();
    expect(takeSignInNotice()).toBe('gateway_unreachable');
  });

  it('refuses an exchange that answers an expired token', async () => {
    history.replaceState(null, '', '/mcp-chat/#login=abc');
    stubNetwork(() => json(200, { token: tokenFor({ exp: 1000 }), expires_at: '1970-01-01T00:16:40Z' }));

    await restoreSession();

    expect(app.token).toBeNull();
    expect(takeSignInNotice()).toBe('token_expired');
  });

  it('keeps the session stored before when a link fails', async () => {
    const token = tokenFor();
    await (await openDb()).put('session', { token, claims: { sub: 'dev-user' } }, 'current');
    history.replaceState(null, '', '/mcp-chat/#login=abc');
    stubNetwork(() => json(409, { error: 'login_link_used', message: 'used' }));

    await restoreSession();

    expect(app.token).toBe(token);
  });
});

describe('restoreSession from IndexedDB', () => {
  it('brings back the stored token without calling the gateway, claims read from the token', async () => {
    const token = tokenFor();
    // Stored claims are not trusted: the token's own are used.
    await (await openDb()).put('session', { token, claims: { sub: 'someone-else', copros: ['x'] } }, 'current');
    stubNetwork(() => new Error('no call expected'));

    await restoreSession();

    expect(calls).toHaveLength(0);
    expect(app.token).toBe(token);
    expect(app.claims).toMatchObject({ sub: 'dev-user', copros: [COPRO_A, COPRO_B] });
  });

  it('selects the copro chosen last if the token still names it, else the first', async () => {
    await (await openDb()).put('session', { token: tokenFor(), claims: {} }, 'current');
    localStorage.setItem('koprogo.copro', COPRO_B);
    await restoreSession();
    expect(app.copro).toBe(COPRO_B);

    await signOut();
    await (await openDb()).put('session', { token: tokenFor({ copros: [COPRO_A] }), claims: {} }, 'current');
    await restoreSession();
    expect(app.copro).toBe(COPRO_A);
  });

  it('forgets an expired stored token and says the session ended', async () => {
    await (await openDb()).put('session', { token: tokenFor({ exp: 1000 }), claims: {} }, 'current');

    await restoreSession();

    expect(app.token).toBeNull();
    expect(await stored()).toBeUndefined();
    expect(takeSignInNotice()).toBe('session_expired');
  });

  it('forgets a stored value that is no token', async () => {
    await (await openDb()).put('session', { token: 'not-a-jwt', claims: {} }, 'current');

    await restoreSession();

    expect(app.token).toBeNull();
    expect(await stored()).toBeUndefined();
  });

  it('starts signed out when nothing is stored', async () => {
    await restoreSession();
    expect(app.token).toBeNull();
    expect(takeSignInNotice()).toBeNull();
  });
});

describe('signIn', () => {
  it('checks a pasted token with the gateway, then stores it', async () => {
    const token = tokenFor();
    stubNetwork(() => json(200, { data: [] }));

    await signIn(`  ${token}\n`);

    expect(calls.map((c) => [c.url, c.authorization])).toEqual([['/mcp/v1/models', `Bearer ${token}`]]);
    expect(app.token).toBe(token);
    expect(((await stored()) as { token: string }).token).toBe(token);
  });

  it('refuses a malformed or expired token without calling the gateway', async () => {
    stubNetwork(() => new Error('no call expected'));
    expect(await signInError(() => signIn('hello'))).toBe('token_malformed');
    expect(await signInError(() => signIn(fakeJwt({ sub: 'u', copros: 'c', exp: 9e9 })))).toBe('token_malformed');
    expect(await signInError(() => signIn(tokenFor({ exp: 1000 })))).toBe('token_expired');
    expect(calls).toHaveLength(0);
    expect(app.token).toBeNull();
  });

  it.each([
    [json(401, { error: 'unauthorized', message: 'token signature does not verify' }), 'token_invalid'],
    [json(403, { error: 'forbidden', message: "this token lacks the 'mcp:read' scope" }), 'token_forbidden'],
    [json(503, { error: 'unavailable', message: 'down' }), 'gateway_error'],
    [json(404, { detail: 'Not Found' }), 'gateway_error'],
    [json(429, { error: 'rate_limited', message: 'slow down' }), 'gateway_error'],
    [new TypeError('Failed to fetch'), 'gateway_unreachable'],
  ])('refuses a token the gateway does not accept (%#) and stores nothing', async (answer, code) => {
    stubNetwork(() => answer);
    expect(await signInError(() => signIn(tokenFor()))).toBe(code);
    expect(app.token).toBeNull();
    expect(await stored()).toBeUndefined();
  });

  it('exchanges a whole sign-in link pasted in the field', async () => {
    const token = tokenFor();
    stubNetwork(() => json(200, { token, expires_at: '2026-12-02T10:00:00Z' }));

    await signIn('http://localhost:8080/mcp-chat/#login=pasted-code');

    expect(calls.map((c) => [c.url, c.body])).toEqual([['/mcp/v1/session/exchange', { code: 'pasted-code' }]]);
    expect(app.token).toBe(token);
  });

  it('ends the session by itself when the token expires', async () => {
    const token = tokenFor({ exp: Date.now() / 1000 + 0.15 });
    stubNetwork(() => json(200, { data: [] }));
    await signIn(token);
    expect(app.token).toBe(token);

    await new Promise((resolve) => setTimeout(resolve, 300));

    expect(app.token).toBeNull();
    expect(takeSignInNotice()).toBe('session_expired');
  });
});

describe('signOut and expireSession', () => {
  it('sign-out forgets the token on the device and in the page', async () => {
    stubNetwork(() => json(200, { data: [] }));
    await signIn(tokenFor());

    await signOut();

    expect(app.token).toBeNull();
    expect(app.claims).toBeNull();
    expect(app.copro).toBeNull();
    expect(await stored()).toBeUndefined();
    expect(takeSignInNotice()).toBeNull();
  });

  it('sign-out takes the user’s conversations off the device, an expiry does not', async () => {
    const token = tokenFor();
    stubNetwork(() => json(200, { data: [] }));
    await signIn(token);
    const sub = app.claims?.sub as string;
    const base = { copro: COPRO_A, role: 'user' as const, model: 'auto', routing: 'copro_default' as const };
    await putMessage({ ...base, id: 'kept-on-expiry', content: 'Q', status: 'done', createdAt: 1, owner: sub });
    expireSession(token);
    await vi.waitFor(() => expect(app.token).toBeNull());
    expect((await listMessages(COPRO_A)).map((m) => m.id)).toEqual(['kept-on-expiry']);

    await signIn(token);
    await putMessage({ ...base, id: 'to-send', content: 'Q2', status: 'queued', createdAt: 2, owner: sub });
    await signOut();
    expect((await listMessages(COPRO_A)).map((m) => m.id)).toEqual(['to-send']);
  });

  it("a 401 for the current token ends the session; one for another token does not", async () => {
    const token = tokenFor();
    stubNetwork(() => json(200, { data: [] }));
    await signIn(token);

    expireSession(tokenFor({ sub: 'other' }));
    expect(app.token).toBe(token);

    expireSession(token);
    expect(app.token).toBeNull();
    await vi.waitFor(async () => expect(await stored()).toBeUndefined());
    expect(takeSignInNotice()).toBe('session_expired');
  });

  it('never puts the token in localStorage', async () => {
    const token = tokenFor();
    stubNetwork(() => json(200, { data: [] }));
    await signIn(token);
    const everything = Object.keys(localStorage).map((key) => `${key}=${localStorage.getItem(key)}`).join('\n');
    expect(everything).not.toContain(token.split('.')[1]);
  });
});

describe('other tabs', () => {
  it("follows another tab's sign-out, sign-in and expiry", async () => {
    const mine = tokenFor();
    await (await openDb()).put('session', { token: mine, claims: {} }, 'current');
    await restoreSession();
    expect(app.token).toBe(mine);
    // What another tab of the page would post after changing the stored session.
    const otherTab = new BroadcastChannel('koprogo.session');
    try {
      const theirs = tokenFor({ sub: 'someone-else', copros: [COPRO_B] });
      await (await openDb()).put('session', { token: theirs, claims: {} }, 'current');
      otherTab.postMessage('signed_in');
      await vi.waitFor(() => expect(app.token).toBe(theirs));
      expect(app.copro).toBe(COPRO_B);

      await (await openDb()).delete('session', 'current');
      otherTab.postMessage('signed_out');
      await vi.waitFor(() => expect(app.token).toBeNull());
      expect(takeSignInNotice()).toBeNull();

      await (await openDb()).put('session', { token: mine, claims: {} }, 'current');
      otherTab.postMessage('signed_in');
      await vi.waitFor(() => expect(app.token).toBe(mine));
      await (await openDb()).delete('session', 'current');
      otherTab.postMessage('expired');
      await vi.waitFor(() => expect(app.token).toBeNull());
      expect(takeSignInNotice()).toBe('session_expired');
    } finally {
      otherTab.close();
    }
  });

  it('tells the other tabs when this one signs out', async () => {
    await restoreSession();
    stubNetwork(() => json(200, { data: [] }));
    await signIn(tokenFor());
    const heard: unknown[] = [];
    const otherTab = new BroadcastChannel('koprogo.session');
    otherTab.onmessage = (event) => heard.push(event.data);
    try {
      await signOut();
      await vi.waitFor(() => expect(heard).toEqual(['signed_out']));
    } finally {
      otherTab.close();
    }
  });
});
