/**
 * A number as a person or a spreadsheet writes it: `1512.50`, `1 512,50 €`, `1.512,50`,
 * `1,512.50`, `21 %`. With both separators the last one is the decimal one; a lone comma is
 * decimal when it is the only one and one or two digits follow it, else it groups thousands;
 * a lone dot is decimal, several dots group thousands. Null when it is no number. Pure.
 */
export function parseDecimal(text: string): number | null {
  let s = text.replace(/[\s\u00a0\u202f€%]|EUR/gi, '');
  if (!/^-?\d[\d.,]*$/.test(s)) return null;
  const comma = s.lastIndexOf(',');
  const dot = s.lastIndexOf('.');
  if (comma >= 0 && dot >= 0) {
    const decimal = comma > dot ? ',' : '.';
    s = s
      .split(decimal === ',' ? '.' : ',')
      .join('')
      .replace(decimal, '.');
  } else if (comma >= 0) {
    s = /^-?\d+,\d{1,2}$/.test(s) ? s.replace(',', '.') : s.split(',').join('');
  } else if (s.indexOf('.') !== dot) {
    s = /^-?\d{1,3}(\.\d{3})+$/.test(s) ? s.split('.').join('') : 'x';
  }
  const value = Number(s);
  return Number.isFinite(value) ? value : null;
}
