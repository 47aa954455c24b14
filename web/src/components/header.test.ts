// The sign-in form and the header's controls rendered in jsdom, fetch stubbed at the network boundary.
import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { flushSync } from 'svelte';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { app } from '../lib/app.svelte';
import { fakeJwt } from '../lib/jwt.fixtures';
import { restoreSession, signIn, signOut } from '../lib/session';
import ConnectionStatus from './ConnectionStatus.svelte';
import CoproPicker from './CoproPicker.svelte';
import LanguageSwitch from './LanguageSwitch.svelte';
import SignIn from './SignIn.svelte';
import ThemeSwitch from './ThemeSwitch.svelte';

const COPRO_A = '00000000-0000-4000-8000-00000000de00';
const COPRO_B = '11111111-0000-4000-8000-0000000000b2';
const token = (copros: string[]) =>
  fakeJwt({ sub: 'dev-user', copros, scope: 'mcp:read mcp:write', exp: Math.floor(Date.now() / 1000) + 3600 });

let answer: () => Response | Error = () => new Error('no call expected');

beforeEach(async () => {
  await signOut();
  localStorage.clear();
  app.locale = 'fr';
  vi.stubGlobal(
    'fetch',
    vi.fn(async () => {
      const result = answer();
      if (result instanceof Error) throw result;
      return result;
    }),
  );
});

afterEach(async () => {
  cleanup();
  vi.unstubAllGlobals();
  await signOut();
});

describe('SignIn', () => {
  it("shows why a sign-in link failed, in the page's language", async () => {
    history.replaceState(null, '', '/mcp-chat/#login=used-code');
    answer = () => new Response(JSON.stringify({ error: 'login_link_used', message: 'used' }), { status: 409 });
    await restoreSession();

    render(SignIn);

    const error = screen.getByTestId('signin-error');
    expect(error.dataset.code).toBe('login_link_used');
    expect(error.textContent?.replace(/\s+/g, ' ')).toContain("Ce lien de connexion a déjà servi : il ne fonctionne qu'une fois.");
  });

  it('turns a refused token into words, then signs in with a good one', async () => {
    render(SignIn);
    const input = screen.getByTestId('signin-token-input');
    expect(screen.getByLabelText("Jeton d'accès")).toBe(input);

    await fireEvent.click(screen.getByTestId('signin-submit'));
    expect(screen.getByTestId('signin-error').textContent).toContain("Collez d'abord votre jeton.");

    await fireEvent.input(input, { target: { value: 'pas un jeton' } });
    await fireEvent.click(screen.getByTestId('signin-submit'));
    await waitFor(() => expect(screen.getByTestId('signin-error').dataset.code).toBe('token_malformed'));

    answer = () => new Response(JSON.stringify({ error: 'unauthorized', message: 'bad signature' }), { status: 401 });
    // Made once: its `exp` follows the clock, so a second call a second later is another token.
    const good = token([COPRO_A]);
    await fireEvent.input(input, { target: { value: good } });
    await fireEvent.click(screen.getByTestId('signin-submit'));
    await waitFor(() => expect(screen.getByTestId('signin-error').dataset.code).toBe('token_invalid'));
    expect(app.token).toBeNull();

    answer = () => new TypeError('Failed to fetch');
    await fireEvent.click(screen.getByTestId('signin-submit'));
    await waitFor(() => expect(screen.getByTestId('signin-error').textContent).toContain('Le serveur est injoignable.'));

    answer = () => new Response(JSON.stringify({ data: [] }), { status: 200 });
    await fireEvent.click(screen.getByTestId('signin-submit'));
    await waitFor(() => expect(app.token).toBe(good));
  });
});

describe('CoproPicker', () => {
  async function signedIn(copros: string[]) {
    answer = () => new Response(JSON.stringify({ data: [] }), { status: 200 });
    await signIn(token(copros));
  }

  it("lists the token's copros by short id, remembers the choice, shows the user and signs out", async () => {
    await signedIn([COPRO_A, COPRO_B]);
    render(CoproPicker);
    const picker = screen.getByTestId('copro-picker') as HTMLSelectElement;
    expect(picker.disabled).toBe(false);
    expect([...picker.options].map((o) => o.textContent)).toEqual(['copro 00000000…de00', 'copro 11111111…00b2']);
    expect(screen.getByLabelText('Copropriété')).toBe(picker);
    expect(screen.getByTestId('signed-in-user').textContent).toBe('dev-user');

    await fireEvent.change(picker, { target: { value: COPRO_B } });
    expect(app.copro).toBe(COPRO_B);
    expect(localStorage.getItem('koprogo.copro')).toBe(COPRO_B);

    await fireEvent.click(screen.getByTestId('sign-out'));
    await waitFor(() => expect(app.token).toBeNull());
  });

  it('shows a single copro without letting it change', async () => {
    await signedIn([COPRO_A]);
    render(CoproPicker);
    expect((screen.getByTestId('copro-picker') as HTMLSelectElement).disabled).toBe(true);
  });
});

describe('header switches', () => {
  it('the language switch offers each language in its own words and sets the locale', async () => {
    render(LanguageSwitch);
    const select = screen.getByTestId('language-switch') as HTMLSelectElement;
    expect(screen.getByLabelText('Langue')).toBe(select);
    expect([...select.options].map((o) => [o.value, o.lang, o.textContent])).toEqual([
      ['fr', 'fr', 'Français'],
      ['en', 'en', 'English'],
      ['nl', 'nl', 'Nederlands'],
    ]);
    await fireEvent.change(select, { target: { value: 'nl' } });
    expect(app.locale).toBe('nl');
    expect(screen.getByLabelText('Taal')).toBe(select);
  });

  it('the theme switch sets the theme', async () => {
    render(ThemeSwitch);
    await fireEvent.change(screen.getByTestId('theme-switch'), { target: { value: 'dark' } });
    expect(app.theme).toBe('dark');
    app.theme = 'system';
  });

  it('the connection status follows app.online', () => {
    app.online = true;
    render(ConnectionStatus);
    const status = screen.getByTestId('connection-status');
    expect(status.getAttribute('role')).toBe('status');
    expect(status.textContent?.trim()).toBe('En ligne');
    app.online = false;
    flushSync();
    expect(status.textContent?.trim()).toBe('Hors ligne');
    app.online = true;
  });
});
