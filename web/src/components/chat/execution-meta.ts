/**
 * What an answer's `execution_info` says, as the words of the meta line: where it ran (edge
 * node, cloud provider, grid), its latency, tokens and grams of CO₂. Pure functions over the
 * gateway's fields (koprogo_shared.events.ExecutionInfo / RoutingSummary), in the page's language.
 */
import { formatNumber, t } from '../../lib/app.svelte';
import type { MessageKey } from '../../i18n';
import type { ExecutionInfo, ModelOption } from '../../lib/chat-store.svelte';

export interface Where {
  kind: 'edge' | 'cloud' | 'grid';
  emoji: string;
  /** What the line shows next to the emoji. */
  short: string;
  /** What a screen reader says instead. */
  long: string;
}

const EMOJI = { edge: '🍓', cloud: '☁️', grid: '🧩' } as const;

/** The router's summary `"<policy>: <model> on cloud <deployment> (~… g, ~… ms)"` names the deployment. */
function deploymentOf(routing: unknown): string | null {
  if (!routing || typeof routing !== 'object') return null;
  const reason = (routing as { reason?: unknown }).reason;
  if (typeof reason !== 'string') return null;
  return /\bon cloud ([^\s(;]+)/.exec(reason)?.[1] ?? null;
}

/** The cloud provider that served `model`: the catalogue's provider, else the deployment the router named. */
export function cloudProvider(model: string, models: readonly ModelOption[], routing: unknown): string | null {
  const known = models.find((m) => m.id === model);
  if (known && known.provider !== 'auto' && known.provider !== 'local') return known.provider;
  return deploymentOf(routing);
}

function providerName(provider: string): string {
  const key = `chat.providers.${provider}` as MessageKey;
  const name = t(key);
  return name === key ? provider : name;
}

export function whereOf(info: ExecutionInfo, model: string, models: readonly ModelOption[]): Where {
  const kind = info.execution_type;
  if (kind === 'edge') {
    const node = info.node_id ?? t('chat.meta.edgeNoNode');
    return { kind, emoji: EMOJI.edge, short: node, long: t('chat.meta.edgeLong', { node }) };
  }
  if (kind === 'grid') {
    const node = info.node_id ?? t('chat.meta.grid');
    return { kind, emoji: EMOJI.grid, short: info.node_id ? `${t('chat.meta.grid')} · ${node}` : node, long: t('chat.meta.gridLong', { node }) };
  }
  const provider = cloudProvider(model, models, info.routing);
  const name = provider ? providerName(provider) : t('chat.meta.cloud');
  return { kind: 'cloud', emoji: EMOJI.cloud, short: name, long: t('chat.meta.cloudLong', { provider: name }) };
}

/** Milliseconds under a second, else seconds with one decimal. */
export function latencyText(ms: number): string {
  return ms < 1000
    ? t('chat.meta.ms', { value: formatNumber(Math.round(ms)) })
    : t('chat.meta.seconds', { value: formatNumber(ms / 1000, 1) });
}

/**
 * Grams: 2 decimals, 3 under 0.1 g, and below a milligram as many as show the first significant
 * digit (an edge answer's 0.0004 g is not "0.000 g"); an exact zero is "0".
 */
export function gramsText(grams: number): string {
  if (grams === 0) return formatNumber(0);
  const size = Math.abs(grams);
  if (size >= 0.1) return formatNumber(grams, 2);
  if (size >= 0.001) return formatNumber(grams, 3);
  return formatNumber(grams, Math.min(8, Math.ceil(-Math.log10(size))));
}
