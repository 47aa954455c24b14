// Why the figures could not be loaded, in the page's language.
import { t } from '../../lib/app.svelte';
import { ApiError, NetworkError } from '../../lib/http';
import { StatsShapeError } from '../../lib/stats-api';

export function statsErrorText(error: unknown): string {
  if (error instanceof NetworkError) return t('stats.errors.network');
  if (error instanceof StatsShapeError) return t('stats.errors.malformed');
  if (error instanceof ApiError) {
    if (error.status === 404) return t('stats.errors.not_found');
    if (error.status === 429) return t('stats.errors.rate_limited', { seconds: error.retryAfterS ?? 60 });
    if (error.status >= 500) return t('stats.errors.unavailable');
    return t('stats.errors.other', { message: error.message });
  }
  return t('stats.errors.other', { message: error instanceof Error ? error.message : String(error) });
}
