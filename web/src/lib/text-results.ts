/**
 * The results of `summarize_meeting` and `translate_document` (docs/tasks/*.md) read and checked,
 * so a malformed one is an error on the page rather than a blank. Pure.
 */

export class TextResultError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TextResultError';
  }
}

export interface MeetingItem {
  number: string;
  title: string;
  vote: string | null;
  majority: string | null;
  votes: { for: number; against: number; abstain: number } | null;
}

export interface MeetingSummary {
  language: string | null;
  meetingDate: string | null;
  summary: string;
  /** "model" (checked prose) or "extract" (written from the decisions). */
  summarySource: string | null;
  decisions: MeetingItem[];
  noVote: string[];
}

export interface Translation {
  text: string;
  sourceLanguage: string | null;
  targetLanguage: string | null;
  numbersMissing: string[];
  untranslatedParagraphs: number[];
}

function record(result: unknown): Record<string, unknown> {
  if (typeof result !== 'object' || result === null || Array.isArray(result)) throw new TextResultError('the result is not an object');
  return result as Record<string, unknown>;
}

const text = (value: unknown): string | null => (typeof value === 'string' ? value : null);

function item(value: unknown): MeetingItem {
  const i = record(value);
  const votes = i.votes as Record<string, unknown> | null | undefined;
  return {
    number: String(i.number ?? ''),
    title: text(i.title) ?? '',
    vote: text(i.vote),
    majority: text(i.majority),
    votes:
      votes && typeof votes.for === 'number' && typeof votes.against === 'number'
        ? { for: votes.for, against: votes.against, abstain: typeof votes.abstain === 'number' ? votes.abstain : 0 }
        : null,
  };
}

export function parseMeetingSummary(result: unknown): MeetingSummary {
  const r = record(result);
  const summary = text(r.summary);
  if (summary === null) throw new TextResultError('the result has no "summary" text');
  return {
    language: text(r.language),
    meetingDate: text(r.meeting_date),
    summary,
    summarySource: text(r.summary_source),
    decisions: Array.isArray(r.decisions) ? r.decisions.map(item) : [],
    noVote: Array.isArray(r.no_vote) ? r.no_vote.filter((v): v is string => typeof v === 'string') : [],
  };
}

export function parseTranslation(result: unknown): Translation {
  const r = record(result);
  const translated = text(r.text);
  if (translated === null) throw new TextResultError('the result has no "text"');
  return {
    text: translated,
    sourceLanguage: text(r.source_language),
    targetLanguage: text(r.target_language),
    numbersMissing: Array.isArray(r.numbers_missing) ? r.numbers_missing.map(String) : [],
    untranslatedParagraphs: Array.isArray(r.paragraphs_in_source_language)
      ? r.paragraphs_in_source_language.filter((n): n is number => typeof n === 'number')
      : [],
  };
}

/** The summary and its decisions as plain text, for the clipboard. */
export function meetingSummaryText(summary: MeetingSummary, describe: (item: MeetingItem) => string, decisionsTitle: string): string {
  const lines = [summary.summary.trim()];
  if (summary.decisions.length) {
    lines.push('', decisionsTitle);
    for (const decision of summary.decisions) lines.push(`- ${decision.number}. ${decision.title} — ${describe(decision)}`);
  }
  return lines.join('\n');
}
