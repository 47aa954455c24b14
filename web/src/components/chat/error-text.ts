/**
 * The words a co-owner reads for a gateway error code. Codes come from the gateway's error tree
 * (services/gateway/src/koprogo_gateway/domain/errors.py) and the router's refusals; an unknown
 * code shows the gateway's own message, never nothing.
 */
import { t } from '../../lib/app.svelte';
import type { MessageKey } from '../../i18n';

type ErrorKey = Extract<MessageKey, `chat.errors.${string}`>;

const BY_CODE: Record<string, ErrorKey> = {
  rate_limited: 'chat.errors.rate_limited',
  model_not_found: 'chat.errors.model_not_found',
  unknown_model: 'chat.errors.model_not_found',
  no_target_available: 'chat.errors.no_target_available',
  no_node_available: 'chat.errors.no_target_available',
  model_not_served: 'chat.errors.no_target_available',
  node_lost: 'chat.errors.node_lost',
  node_changed: 'chat.errors.node_lost',
  routing_policy_violation: 'chat.errors.policy_forbids',
  policy_forbids: 'chat.errors.policy_forbids',
  forbidden: 'chat.errors.forbidden',
  unauthorized: 'chat.errors.unauthorized',
  timeout: 'chat.errors.timeout',
  offline: 'chat.errors.offline',
  network: 'chat.errors.offline',
  network_error: 'chat.errors.offline',
  bus_unavailable: 'chat.errors.unavailable',
  bus_full: 'chat.errors.unavailable',
  rate_limit_unavailable: 'chat.errors.unavailable',
  routing_policy_unavailable: 'chat.errors.unavailable',
  idempotency_unavailable: 'chat.errors.unavailable',
  http_502: 'chat.errors.unavailable',
  http_503: 'chat.errors.unavailable',
  http_504: 'chat.errors.timeout',
  stream_incomplete: 'chat.errors.interrupted',
  chat_cancelled: 'chat.errors.cancelled',
  request_too_large: 'chat.errors.too_long',
  context_length_exceeded: 'chat.errors.too_long',
  unsupported_parameter: 'chat.errors.unsupported',
};

/** The translation key for a gateway error, or null when the code is not one we know. */
export function errorKey(code: string, message: string): ErrorKey | null {
  // The router's edge_only refusals share `no_target_available` but mean "the copro's policy
  // keeps the data on its own nodes"; its messages start with the policy's name.
  if (code === 'no_target_available' && message.startsWith('policy edge_only')) return 'chat.errors.edge_only_no_node';
  // A forbidden target (the copro's policy) may come back as a plain 403 naming the policy.
  if (code === 'forbidden' && /routing policy|edge_only/i.test(message)) return 'chat.errors.policy_forbids';
  if (/unknown model/i.test(message)) return 'chat.errors.model_not_found';
  return BY_CODE[code] ?? null;
}

/** The friendly text for a gateway error in the page's language; the gateway's message when the code is unknown. */
export function errorText(code: string, message: string): string {
  const key = errorKey(code, message);
  if (key) return t(key);
  return t('chat.errors.gateway', { detail: message || code });
}
