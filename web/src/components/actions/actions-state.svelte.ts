/**
 * The quick actions' state, kept at module level so that closing a panel (or switching to the
 * chat tab on a phone) loses neither what was typed nor the task being followed: each action's
 * inputs and its `TaskRun`. Only the open panel is rendered.
 */
import type { Locale } from '../../i18n';
import type { InvoiceRow } from '../../lib/invoice';
import type { TargetLanguage } from '../../lib/tasks-api';
import { TaskRun } from './task-run.svelte';

export type ActionName = 'summarize' | 'translate' | 'ocr' | 'forecast';
export const ACTION_NAMES: readonly ActionName[] = ['summarize', 'translate', 'ocr', 'forecast'];

/** Belgium's other language by default: French ↔ Dutch (English readers most often want French). */
export function defaultTarget(locale: Locale): TargetLanguage {
  return locale === 'fr' ? 'nl' : 'fr';
}

function fresh() {
  return {
    open: null as ActionName | null,
    summarize: { text: '', file: null as File | null },
    translate: { text: '', file: null as File | null, target: null as TargetLanguage | null },
    ocr: { file: null as File | null, rows: [] as InvoiceRow[], rowsOf: null as string | null },
    forecast: { file: null as File | null, csv: null as string | null, horizon: 12, series: 'total' },
  };
}

export const actionsState = $state(fresh());

export const runs: Record<ActionName, TaskRun> = {
  summarize: new TaskRun(),
  translate: new TaskRun(),
  ocr: new TaskRun(),
  forecast: new TaskRun(),
};

/** Forget everything (another copro selected, signed out); tasks already submitted go on on the grid. */
export function resetActions(): void {
  // In place: the open panel's components hold references to these objects.
  const initial = fresh();
  actionsState.open = initial.open;
  Object.assign(actionsState.summarize, initial.summarize);
  Object.assign(actionsState.translate, initial.translate);
  Object.assign(actionsState.ocr, initial.ocr);
  Object.assign(actionsState.forecast, initial.forecast);
  for (const run of Object.values(runs)) run.reset();
}
