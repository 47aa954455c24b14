// The building's link to the hub: GET /mcp/v1/site polled into app.hubLink, a failed poll keeping
// the state, and the header's banner that shows it (fetch stubbed at the network boundary).
import { cleanup, render, screen } from '@testing-library/svelte';
import { flushSync } from 'svelte';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import ConnectionStatus from '../components/ConnectionStatus.svelte';
import { common as en } from '../i18n/en/common';
import { common as fr } from '../i18n/fr/common';
import { app } from './app.svelte';
import { hubLinkOf, pollSiteLink, SITE_PATH, startSiteLink } from './site-link';

const site = (hub_link: string) =>
  new Response(JSON.stringify({ site: 'building', hub_link, since: '2026-12-02T23:00:00Z' }), { status: 200 });

let answer: () => Response | Error;
let fetchMock: ReturnType<typeof vi.fn>;

beforeEach(() => {
  app.hubLink = 'unknown';
  app.locale = 'fr';
  app.token = 'token-of-the-session';
  answer = () => site('up');
  fetchMock = vi.fn(async () => {
    const result = answer();
    if (result instanceof Error) throw result;
    return result;
  });
  vi.stubGlobal('fetch', fetchMock);
});

afterEach(() => {
  cleanup();
  vi.useRealTimers();
  vi.unstubAllGlobals();
  app.token = null;
  app.hubLink = 'unknown';
});

describe('hubLinkOf', () => {
  it('takes the link of a site body and nothing else', () => {
    expect(hubLinkOf({ site: 'hub', hub_link: 'up', since: null })).toBe('up');
    expect(hubLinkOf({ hub_link: 'down' })).toBe('down');
    expect(hubLinkOf({ hub_link: 'unknown' })).toBe('unknown');
    expect(hubLinkOf({ hub_link: 'sideways' })).toBeNull();
    expect(hubLinkOf({ error: 'not_found' })).toBeNull();
    expect(hubLinkOf(null)).toBeNull();
    expect(hubLinkOf(['down'])).toBeNull();
  });
});

describe('pollSiteLink', () => {
  it('asks the public route without the session token and records its link', async () => {
    answer = () => site('down');
    await pollSiteLink();
    expect(app.hubLink).toBe('down');
    const [path, init] = fetchMock.mock.calls[0] as [string, RequestInit];
    expect(path).toBe(SITE_PATH);
    expect(new Headers(init.headers).has('Authorization')).toBe(false);
  });

  it.each([
    ['a network error', () => new TypeError('Failed to fetch')],
    ['an older gateway without the route', () => new Response(JSON.stringify({ error: 'not_found' }), { status: 404 })],
    ['a proxy page', () => new Response('<html>502</html>', { status: 200 })],
    ['another shape', () => new Response(JSON.stringify({ hub_link: 'sideways' }), { status: 200 })],
  ])('keeps the previous state on %s', async (_, failure) => {
    answer = () => site('down');
    await pollSiteLink();
    answer = failure;
    await pollSiteLink();
    expect(app.hubLink).toBe('down');
    expect(app.token).toBe('token-of-the-session');
  });
});

describe('startSiteLink', () => {
  it('polls at once, then every interval, until stopped', async () => {
    vi.useFakeTimers();
    const stop = startSiteLink(10_000);
    await vi.waitFor(() => expect(app.hubLink).toBe('up'));
    expect(fetchMock).toHaveBeenCalledTimes(1);

    answer = () => site('down');
    await vi.advanceTimersByTimeAsync(9_000);
    expect(fetchMock).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(fetchMock).toHaveBeenCalledTimes(2);
    await vi.waitFor(() => expect(app.hubLink).toBe('down'));

    answer = () => new TypeError('Failed to fetch');
    await vi.advanceTimersByTimeAsync(10_000);
    expect(fetchMock).toHaveBeenCalledTimes(3);
    expect(app.hubLink).toBe('down');

    stop();
    await vi.advanceTimersByTimeAsync(30_000);
    expect(fetchMock).toHaveBeenCalledTimes(3);
  });
});

describe('the header banner', () => {
  it('shows while the building is cut from the hub, in the page language, and goes when the link returns', () => {
    render(ConnectionStatus);
    expect(screen.queryByTestId('hub-offline-banner')).toBeNull();

    app.hubLink = 'down';
    flushSync();
    expect(screen.getByTestId('hub-offline-banner').textContent?.trim()).toBe(fr.hubOffline);
    expect(fr.hubOffline).toBe(
      'Bâtiment hors ligne\u00a0: les modèles locaux répondent toujours, les modèles cloud sont indisponibles.',
    );
    app.locale = 'en';
    flushSync();
    expect(screen.getByTestId('hub-offline-banner').textContent?.trim()).toBe(en.hubOffline);

    app.hubLink = 'unknown';
    flushSync();
    expect(screen.queryByTestId('hub-offline-banner')).toBeNull();
    app.hubLink = 'up';
    flushSync();
    expect(screen.queryByTestId('hub-offline-banner')).toBeNull();
    expect(screen.getByTestId('hub-link-status').dataset.hubLink).toBe('up');
  });
});
