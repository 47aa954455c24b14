import { describe, expect, it } from 'vitest';
import { parseDecimal } from './decimal';
import { confidenceLevel, editedValues, invalidNumbers, invoiceCsv, invoiceJson, parseInvoiceResult } from './invoice';

// The node's result for the fixture facture-chauffage-F-2025-0142.pdf (values from
// shared/fixtures/expected.json; shape from docs/tasks/ocr_invoice.md), with the due date left
// out as a scan may leave it, and the IBAN read with a low OCR score.
const RESULT = {
  fields: {
    iban: { value: 'BE71 0961 2345 6769', confidence: 0.42, source: 'ocr' },
    supplier: { value: 'Chauffage Dubois SPRL', confidence: 0.9, source: 'ocr' },
    supplier_vat_id: { value: 'BE 0456.789.123', confidence: 0.95, source: 'ocr' },
    invoice_number: { value: 'F-2025-0142', confidence: 0.95, source: 'ocr' },
    issue_date: { value: '2025-03-14', confidence: 0.6, source: 'ocr' },
    total_excl_vat: { value: 1250.0, confidence: 0.95, source: 'ocr' },
    vat_rate: { value: 21.0, confidence: 0.95, source: 'ocr' },
    vat: { value: 262.5, confidence: 0.95, source: 'ocr' },
    total_incl_vat: { value: 1512.5, confidence: 0.95, source: 'ocr' },
    currency: { value: 'EUR', confidence: 0.6, source: 'ocr' },
    payment_reference: { value: '+++090/9337/55493+++', confidence: 0.8, source: 'ocr' },
  },
  missing: ['due_date'],
  checks: { iban_checksum: 'ok', totals: 'ok', vat_rate: 'ok' },
  text_source: 'ocr',
  pages: 1,
};

describe('parseInvoiceResult', () => {
  it('orders the fields as a syndic books them, a missing one as an empty row, an unknown one kept last', () => {
    const invoice = parseInvoiceResult(RESULT);
    expect(invoice.rows.map((r) => r.name)).toEqual([
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
      'payment_reference',
    ]);
    const byName = Object.fromEntries(invoice.rows.map((r) => [r.name, r]));
    expect(byName.due_date).toMatchObject({ value: '', confidence: null, level: 'missing' });
    expect(byName.total_incl_vat).toMatchObject({ value: '1512.50', level: 'high' });
    expect(byName.vat_rate.value).toBe('21');
    expect(byName.issue_date.level).toBe('medium');
    expect(byName.iban.level).toBe('low');
    expect(invoice.checks).toEqual({ iban_checksum: 'ok', totals: 'ok', vat_rate: 'ok' });
    expect(invoice.textSource).toBe('ocr');
  });

  it('writes numbers with the reader\'s decimal separator, read back as numbers', () => {
    const rows = parseInvoiceResult(RESULT, ',').rows;
    const total = rows.find((r) => r.name === 'total_incl_vat')!;
    expect(total.value).toBe('1512,50');
    expect(rows.find((r) => r.name === 'supplier_vat_id')!.value).toBe('BE 0456.789.123');
    expect(editedValues(rows).total_incl_vat).toBe(1512.5);
    expect(editedValues(rows).vat).toBe(262.5);
  });

  it('refuses a result without fields instead of showing an empty table', () => {
    expect(() => parseInvoiceResult({ missing: [] })).toThrow(/fields/);
    expect(() => parseInvoiceResult(null)).toThrow();
  });

  it('grades confidence at 0.85 and 0.6', () => {
    expect([0.95, 0.85, 0.84, 0.6, 0.59, 0.3, null].map(confidenceLevel)).toEqual(['high', 'high', 'medium', 'medium', 'low', 'low', 'missing']);
  });
});

describe('the edited values', () => {
  it('reads amounts typed the Belgian or the English way', () => {
    expect(parseDecimal('1 512,50 €')).toBe(1512.5);
    expect(parseDecimal('1.512,50')).toBe(1512.5);
    expect(parseDecimal('1,512.50')).toBe(1512.5);
    expect(parseDecimal('1512.5')).toBe(1512.5);
    expect(parseDecimal('21 %')).toBe(21);
    expect(parseDecimal('18\u202f450')).toBe(18450);
    expect(parseDecimal('1.234.567')).toBe(1234567);
    expect(parseDecimal('1,250')).toBe(1250);
    expect(parseDecimal('12,5')).toBe(12.5);
    expect(parseDecimal('douze')).toBeNull();
    expect(parseDecimal('1.2.3')).toBeNull();
    expect(parseDecimal('')).toBeNull();
  });

  it('exports numbers as numbers, text as text, empty as null', () => {
    const rows = parseInvoiceResult(RESULT).rows.map((r) =>
      r.name === 'total_incl_vat' ? { ...r, value: '1 600,00' } : r.name === 'due_date' ? { ...r, value: '2025-04-13' } : r,
    );
    const values = editedValues(rows);
    expect(values.total_incl_vat).toBe(1600);
    expect(values.due_date).toBe('2025-04-13');
    expect(values.supplier).toBe('Chauffage Dubois SPRL');
    expect(JSON.parse(invoiceJson(rows))).toEqual(values);
    expect(editedValues([{ name: 'vat', value: ' ', confidence: null, source: null, level: 'missing' }])).toEqual({ vat: null });
  });

  it('names the amounts that are not numbers', () => {
    const rows = parseInvoiceResult(RESULT).rows.map((r) => (r.name === 'vat' ? { ...r, value: 'deux cents' } : r));
    expect(invalidNumbers(rows)).toEqual(['vat']);
    // kept as typed rather than dropped
    expect(editedValues(rows).vat).toBe('deux cents');
  });

  it('writes RFC 4180 CSV with labels and confidences', () => {
    const rows = parseInvoiceResult(RESULT).rows;
    const csv = invoiceCsv(rows, (name) => (name === 'supplier' ? 'Fournisseur, nom' : name));
    const lines = csv.trimEnd().split('\r\n');
    expect(lines[0]).toBe('field,label,value,confidence');
    expect(lines[1]).toBe('supplier,"Fournisseur, nom",Chauffage Dubois SPRL,0.9');
    expect(lines).toContain('due_date,due_date,,');
    expect(lines).toContain('total_incl_vat,total_incl_vat,1512.5,0.95');
    expect(lines).toHaveLength(rows.length + 1);
  });
});
