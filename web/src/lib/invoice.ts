/**
 * The result of an `ocr_invoice` task as the page edits it (the node's shape:
 * docs/tasks/ocr_invoice.md): one row per field in the order a syndic books an invoice, each with
 * its value as editable text, its confidence and a level (high, medium, low, missing); then the
 * edited values back as JSON or CSV. Pure.
 */
import { parseDecimal } from './decimal';

/** The node's field names, in its order (`invoice_fields.FIELD_NAMES`). */
export const INVOICE_FIELDS = [
  'supplier',
  'supplier_vat_id',
  'invoice_number',
  'issue_date',
  'due_date',
  'total_excl_vat',
  'vat_rate',
  'vat',
  'total_incl_vat',
  'currency',
  'iban',
] as const;
export type InvoiceFieldName = (typeof INVOICE_FIELDS)[number];

const NUMBER_FIELDS: ReadonlySet<string> = new Set(['total_excl_vat', 'vat_rate', 'vat', 'total_incl_vat']);
const AMOUNT_FIELDS: ReadonlySet<string> = new Set(['total_excl_vat', 'vat', 'total_incl_vat']);

export type ConfidenceLevel = 'high' | 'medium' | 'low' | 'missing';

export interface InvoiceRow {
  name: string;
  /** The value as the input shows it (amounts with two decimals). */
  value: string;
  confidence: number | null;
  /** pdf_text, ocr or model; null for a field not found. */
  source: string | null;
  level: ConfidenceLevel;
}

export interface InvoiceResult {
  rows: InvoiceRow[];
  /** iban_checksum, totals, vat_rate → ok | failed | missing | incomplete. */
  checks: Record<string, string>;
  textSource: string | null;
  pages: number | null;
}

export class InvoiceResultError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvoiceResultError';
  }
}

/** At or above: high; at or above MEDIUM: medium; below: low (the node's rules: 0.95 on the label's row, 0.6–0.65 by position, 0.3 from the model). */
export const HIGH_CONFIDENCE = 0.85;
export const MEDIUM_CONFIDENCE = 0.6;

export function confidenceLevel(confidence: number | null): ConfidenceLevel {
  if (confidence === null) return 'missing';
  if (confidence >= HIGH_CONFIDENCE) return 'high';
  if (confidence >= MEDIUM_CONFIDENCE) return 'medium';
  return 'low';
}

export function isNumberField(name: string): boolean {
  return NUMBER_FIELDS.has(name);
}

export function isAmountField(name: string): boolean {
  return AMOUNT_FIELDS.has(name);
}

function valueText(name: string, value: unknown, decimal: '.' | ','): string {
  if (typeof value === 'number') return (AMOUNT_FIELDS.has(name) ? value.toFixed(2) : String(value)).replace('.', decimal);
  if (typeof value === 'string') return value;
  if (value === null || value === undefined) return '';
  return JSON.stringify(value);
}

/**
 * The rows of a task's result: the known fields in booking order (a missing one as an empty row
 * to fill in), then any field this page does not know yet (kept, never dropped). Numbers are
 * written with `decimal` as the reader writes them (`1512,50` in French and Dutch).
 */
export function parseInvoiceResult(result: unknown, decimal: '.' | ',' = '.'): InvoiceResult {
  if (typeof result !== 'object' || result === null) throw new InvoiceResultError('the result is not an object');
  const { fields, checks, text_source, pages } = result as Record<string, unknown>;
  if (typeof fields !== 'object' || fields === null || Array.isArray(fields)) {
    throw new InvoiceResultError('the result has no "fields" object');
  }
  const found = fields as Record<string, unknown>;
  const names = [...INVOICE_FIELDS, ...Object.keys(found).filter((n) => !(INVOICE_FIELDS as readonly string[]).includes(n))];
  const rows = names.map((name): InvoiceRow => {
    const field = found[name];
    if (field === undefined) return { name, value: '', confidence: null, source: null, level: 'missing' };
    if (typeof field !== 'object' || field === null) throw new InvoiceResultError(`field ${name} is not an object`);
    const { value, confidence, source } = field as Record<string, unknown>;
    const score = typeof confidence === 'number' && Number.isFinite(confidence) ? Math.min(Math.max(confidence, 0), 1) : null;
    return {
      name,
      value: valueText(name, value, decimal),
      confidence: score,
      source: typeof source === 'string' ? source : null,
      level: score === null ? 'low' : confidenceLevel(score),
    };
  });
  const checked: Record<string, string> = {};
  if (typeof checks === 'object' && checks !== null) {
    for (const [name, outcome] of Object.entries(checks)) if (typeof outcome === 'string') checked[name] = outcome;
  }
  return {
    rows,
    checks: checked,
    textSource: typeof text_source === 'string' ? text_source : null,
    pages: typeof pages === 'number' ? pages : null,
  };
}

export type EditedValue = string | number | null;

/** The edited values by field: numbers for the amounts and rate, text otherwise, null when empty. */
export function editedValues(rows: readonly InvoiceRow[]): Record<string, EditedValue> {
  const values: Record<string, EditedValue> = {};
  for (const row of rows) {
    const text = row.value.trim();
    if (!text) values[row.name] = null;
    else if (NUMBER_FIELDS.has(row.name)) values[row.name] = parseDecimal(text) ?? text;
    else values[row.name] = text;
  }
  return values;
}

/** Numeric fields whose text is not a number (shown as an error on the input). */
export function invalidNumbers(rows: readonly InvoiceRow[]): string[] {
  return rows.filter((r) => NUMBER_FIELDS.has(r.name) && r.value.trim() && parseDecimal(r.value) === null).map((r) => r.name);
}

export function invoiceJson(rows: readonly InvoiceRow[]): string {
  return JSON.stringify(editedValues(rows), null, 2);
}

function csvCell(value: string): string {
  return /[",\n\r;]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/** RFC 4180 CSV of the edited values: field, label, value, confidence (0–1, empty if not found). */
export function invoiceCsv(rows: readonly InvoiceRow[], labelOf: (name: string) => string): string {
  const values = editedValues(rows);
  const lines = [['field', 'label', 'value', 'confidence']];
  for (const row of rows) {
    const value = values[row.name];
    lines.push([row.name, labelOf(row.name), value === null ? '' : String(value), row.confidence === null ? '' : String(row.confidence)]);
  }
  return lines.map((cells) => cells.map(csvCell).join(',')).join('\r\n') + '\r\n';
}
