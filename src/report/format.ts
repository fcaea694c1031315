// Escaping and number formatting for the report page. Every string that reaches the page, from the report
// or the job, goes through escapeHtml; numbers through the formatters (which never print NaN).

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escapes text for HTML and SVG text and attribute values (both quote styles). */
export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

/** A finite number, or undefined. */
export function num(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

export function rec(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

const DASH = '—';

/** 66256640 → "66.3 M"; 480 → "480". */
export function count(value: number | undefined): string {
  if (value === undefined) return DASH;
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${(value / 1e9).toFixed(2)} G`;
  if (abs >= 1e6) return `${(value / 1e6).toFixed(1)} M`;
  if (abs >= 1e4) return `${(value / 1e3).toFixed(1)} k`;
  return String(Math.round(value));
}

export function fixed(value: number | undefined, digits: number, unit = ''): string {
  return value === undefined ? DASH : `${value.toFixed(digits)}${unit}`;
}

/** A fraction as a percentage: 0.9565 → "95.65 %". */
export function percent(value: number | undefined): string {
  return value === undefined ? DASH : `${(value * 100).toFixed(2)} %`;
}

/** before / after as "5.07×". */
export function times(value: number | undefined): string {
  return value === undefined ? DASH : `${value.toFixed(2)}×`;
}

/** Shortens a long node name for a chart label, keeping its end (the most specific part). */
export function shorten(label: string, max = 36): string {
  return label.length <= max ? label : `…${label.slice(label.length - max + 1)}`;
}
