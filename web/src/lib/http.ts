/**
 * The one way the page calls the gateway: same origin, the bearer token from the session, JSON
 * errors turned into `ApiError` (the gateway's `{"error", "message"}` body, its status and
 * `Retry-After`). A network failure (offline, connection lost) is `NetworkError`, so callers can
 * tell "the gateway said no" from "the gateway was not reached".
 */
import { app } from './app.svelte';
import { expireSession } from './session';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfterS: number | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** Worth sending again later with the same idempotency key: rate-limited or the server unreachable. */
  get retryable(): boolean {
    return this.status === 429 || this.status === 502 || this.status === 503 || this.status === 504;
  }
}

export class NetworkError extends Error {
  constructor(message = 'network unreachable') {
    super(message);
    this.name = 'NetworkError';
  }
}

/** `fetch` on the gateway with the session's token; throws ApiError on a non-2xx, NetworkError when unreachable. */
export async function apiFetch(path: string, init: RequestInit = {}, token: string | null = app.token): Promise<Response> {
  const headers = new Headers(init.headers);
  if (token) headers.set('Authorization', `Bearer ${token}`);
  if (init.body && typeof init.body === 'string' && !headers.has('Content-Type')) {
    headers.set('Content-Type', 'application/json');
  }
  let response: Response;
  try {
    response = await fetch(path, { ...init, headers, cache: 'no-store' });
  } catch (error) {
    if (error instanceof DOMException && error.name === 'AbortError') throw error;
    throw new NetworkError(error instanceof Error ? error.message : String(error));
  }
  if (!response.ok) {
    // The session's token was refused (expired, revoked, the secret rotated): back to sign-in.
    // expireSession ignores a token that is not the current one (the sign-in form's own check).
    if (response.status === 401 && token) expireSession(token);
    throw await apiErrorOf(response);
  }
  return response;
}

/** `apiFetch` then the JSON body. */
export async function apiJson<T>(path: string, init: RequestInit = {}): Promise<T> {
  const response = await apiFetch(path, init);
  return (await response.json()) as T;
}

export async function apiErrorOf(response: Response): Promise<ApiError> {
  const retryAfter = Number(response.headers.get('Retry-After'));
  let code = `http_${response.status}`;
  let message = response.statusText || code;
  try {
    const body = (await response.json()) as { error?: unknown; message?: unknown; detail?: unknown };
    if (typeof body.error === 'string') code = body.error;
    if (typeof body.message === 'string') message = body.message;
    else if (typeof body.detail === 'string') message = body.detail;
  } catch {
    // Not JSON (a proxy's page): keep the status line.
  }
  return new ApiError(response.status, code, message, Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null);
}
