/**
 * Random ids (uuid v4) for messages and idempotency keys. `crypto.randomUUID` exists only in
 * secure contexts (https, localhost); a gateway reached over plain http on a building's LAN has
 * `crypto.getRandomValues` only, so the fallback builds the same v4 format from it.
 */
export function newId(): string {
  const c: Crypto | undefined = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  if (!c || typeof c.getRandomValues !== 'function') {
    // No Web Crypto at all (never in a browser this page supports): refuse rather than invent weak keys.
    throw new Error('no Web Crypto: cannot make a random id');
  }
  const bytes = c.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
