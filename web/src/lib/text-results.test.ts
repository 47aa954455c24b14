import { describe, expect, it } from 'vitest';
import { meetingSummaryText, parseMeetingSummary, parseTranslation } from './text-results';

// Shaped as docs/tasks/summarize_meeting.md's result for shared/fixtures/pv-ag-2025-les-tilleuls.txt.
const SUMMARY = {
  language: 'fr',
  meeting_date: '2025-03-18',
  summary: "L'assemblée approuve les comptes 2024 et le remplacement de la chaudière pour 18 450 € HTVA.",
  summary_source: 'extract',
  items: [],
  decisions: [
    { number: '2', title: 'Approbation des comptes 2024', vote: 'approved', majority: 'absolute', votes: { for: 6820, against: 0, abstain: 0 }, decision: '', amounts: [], dates: [] },
    { number: '3', title: 'Remplacement de la chaudière collective', vote: 'approved', majority: 'two_thirds', votes: { for: 5210, against: 1160, abstain: 450 }, decision: '', amounts: [], dates: [] },
  ],
  no_vote: ['Installation de bornes de recharge pour véhicules électriques'],
  amounts: [],
  dates: ['2025-03-18', '2025-06-30'],
};

describe('parseMeetingSummary', () => {
  it('reads the summary, decisions with their majorities and votes, and the items without a vote', () => {
    const summary = parseMeetingSummary(SUMMARY);
    expect(summary.meetingDate).toBe('2025-03-18');
    expect(summary.summarySource).toBe('extract');
    expect(summary.decisions.map((d) => [d.number, d.majority])).toEqual([
      ['2', 'absolute'],
      ['3', 'two_thirds'],
    ]);
    expect(summary.decisions[1].votes).toEqual({ for: 5210, against: 1160, abstain: 450 });
    expect(summary.noVote).toEqual(['Installation de bornes de recharge pour véhicules électriques']);
  });

  it('refuses a result without a summary', () => {
    expect(() => parseMeetingSummary({ decisions: [] })).toThrow(/summary/);
    expect(() => parseMeetingSummary('texte')).toThrow();
  });

  it('writes the summary and the decisions as text for the clipboard', () => {
    const text = meetingSummaryText(parseMeetingSummary(SUMMARY), (d) => d.vote ?? '', 'Décisions');
    expect(text.split('\n')).toEqual([
      SUMMARY.summary,
      '',
      'Décisions',
      '- 2. Approbation des comptes 2024 — approved',
      '- 3. Remplacement de la chaudière collective — approved',
    ]);
  });
});

describe('parseTranslation', () => {
  it('reads the text and what to check', () => {
    const translation = parseTranslation({
      text: 'Algemene vergadering\n\nDe vergadering keurt de rekeningen goed.',
      source_language: 'fr',
      target_language: 'nl',
      paragraphs: 2,
      model_calls: 2,
      numbers_missing: ['18 450'],
      paragraphs_in_source_language: [2],
    });
    expect(translation.text).toContain('\n\n');
    expect(translation.numbersMissing).toEqual(['18 450']);
    expect(translation.untranslatedParagraphs).toEqual([2]);
    expect(() => parseTranslation({ source_language: 'fr' })).toThrow(/text/);
  });
});
