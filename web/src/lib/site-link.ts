/**
 * Whether the gateway's building reaches the hub (issue 18): `GET /mcp/v1/site`, public, read at
 * start and every 10 s while the page is open, into `app.hubLink`. `down` means the building's
 * line to the hub is cut: its local models still answer, the cloud models do not. A poll that
 * fails (the browser offline, the gateway unreachable, an answer of another shape, an older
 * gateway without the route) keeps the state the page had: the browser's own offline state is
 * shown beside it (ConnectionStatus).
 */
import { app, type HubLink } from './app.svelte';
import { apiFetch } from './http';

export const SITE_PATH = '/mcp/v1/site';
export const SITE_POLL_MS = 10_000;

const LINKS: readonly HubLink[] = ['up', 'down', 'unknown'];

/** The `hub_link` of a `/mcp/v1/site` body, or null when the body is not one. */
export function hubLinkOf(body: unknown): HubLink | null {
  const link = (body as { hub_link?: unknown } | null)?.hub_link;
  return LINKS.includes(link as HubLink) ? (link as HubLink) : null;
}

/** Reads the site once into `app.hubLink`; any failure leaves it as it was. */
export async function pollSiteLink(): Promise<void> {
  try {
    // No token: the route is public, and a poll must never end a session.
    const response = await apiFetch(SITE_PATH, {}, null);
    const link = hubLinkOf(await response.json());
    if (link !== null) app.hubLink = link;
  } catch {
    // Not reached, or not understood: the previous state stands until a poll succeeds.
  }
}

/** Polls now and every `intervalMs`; returns the stop function. */
export function startSiteLink(intervalMs = SITE_POLL_MS): () => void {
  void pollSiteLink();
  const timer = setInterval(() => void pollSiteLink(), intervalMs);
  return () => clearInterval(timer);
}
