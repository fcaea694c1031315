// Inline SVG charts for the report page, drawn on the server: no script, no external resource, no style
// attribute (colours come from the page's one stylesheet through classes), every label escaped.
import { count, escapeHtml, fixed, shorten } from './format.js';

export interface LayerRow {
  label: string;
  op: string;
  kind: string;
  macsBefore: number;
  macsAfter: number;
  /** ‖W − Ŵ‖ / ‖W‖ of the rewrite; undefined for kept layers */
  relError: number | undefined;
}

export interface TradeoffPoint {
  /** MACs after ÷ before */
  macsRatio: number;
  /** top-1 on the held-out split, a fraction */
  accuracy: number;
  chosen: boolean;
  /** within the job's accuracy limit, when the search said */
  withinLimit: boolean | undefined;
}

const r = (v: number): string => (Math.round(v * 10) / 10).toString();

function text(x: number, y: number, content: string, cls: string, anchor: 'start' | 'middle' | 'end' = 'start'): string {
  return `<text x="${r(x)}" y="${r(y)}" class="${cls}" text-anchor="${anchor}">${escapeHtml(content)}</text>`;
}

function rect(x: number, y: number, width: number, height: number, cls: string, title: string): string {
  return `<rect x="${r(x)}" y="${r(y)}" width="${r(Math.max(width, 0.5))}" height="${r(height)}" class="${cls}"><title>${escapeHtml(title)}</title></rect>`;
}

function svg(width: number, height: number, id: string, label: string, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" id="${id}" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-labelledby="${id}-title">`,
    `<title id="${id}-title">${escapeHtml(label)}</title>`,
    ...body,
    '</svg>',
  ].join('\n');
}

/** An axis line of `width` from (x, y) with ticks at its start, middle and end, labelled by the fraction. */
function horizontalAxis(x: number, y: number, width: number, label: (fraction: number) => string): string[] {
  const ticks = ([[0, 'start'], [0.5, 'middle'], [1, 'end']] as const).map(([f, anchor]) => text(x + f * width, y + 16, label(f), 'tick', anchor));
  return [`<line x1="${x}" y1="${y}" x2="${x + width}" y2="${y}" class="axis"/>`, ...ticks];
}

const LABEL_WIDTH = 270;
const MACS_WIDTH = 430;
const GAP = 30;
const ERROR_WIDTH = 150;
const ROW = 24;
const TOP = 44;

/**
 * One row per layer: MACs before and after as two bars on a shared linear scale, and the relative error
 * of the rewritten weight (0 to 1) beside them.
 */
export function layerChart(layers: LayerRow[]): string {
  const width = LABEL_WIDTH + MACS_WIDTH + GAP + ERROR_WIDTH + 20;
  const height = TOP + layers.length * ROW + 30;
  const max = Math.max(1, ...layers.map((l) => Math.max(l.macsBefore, l.macsAfter)));
  const macsX = LABEL_WIDTH;
  const errorX = LABEL_WIDTH + MACS_WIDTH + GAP;
  const body: string[] = [
    text(macsX, 16, 'MACs per image: before (grey) and after (blue)', 'chart-heading'),
    text(errorX, 16, 'relative error', 'chart-heading'),
    `<g class="legend">${rect(macsX, 24, 12, 8, 'bar-before legend-swatch', 'before')}${text(macsX + 16, 32, 'before', 'legend-text')}`
      + `${rect(macsX + 70, 24, 12, 8, 'bar-after legend-swatch', 'after')}${text(macsX + 86, 32, 'after', 'legend-text')}</g>`,
  ];
  layers.forEach((layer, i) => {
    const y = TOP + i * ROW;
    const name = `${layer.label} (${layer.op}, ${layer.kind})`;
    body.push(`<g class="layer-row">`);
    body.push(`<text x="${LABEL_WIDTH - 8}" y="${r(y + 14)}" class="layer-label" text-anchor="end"><title>${escapeHtml(name)}</title>${escapeHtml(shorten(layer.label))}</text>`);
    body.push(rect(macsX, y + 3, (layer.macsBefore / max) * MACS_WIDTH, 8, 'bar-before', `${name}: ${layer.macsBefore} MACs before`));
    body.push(rect(macsX, y + 12, (layer.macsAfter / max) * MACS_WIDTH, 8, 'bar-after', `${name}: ${layer.macsAfter} MACs after`));
    if (layer.relError !== undefined) {
      const error = Math.min(Math.max(layer.relError, 0), 1);
      body.push(rect(errorX, y + 5, error * ERROR_WIDTH, 12, 'bar-error', `${name}: relative error ${layer.relError.toFixed(4)}`));
      body.push(text(errorX + error * ERROR_WIDTH + 4, y + 15, fixed(layer.relError, 3), 'value-label'));
    } else {
      body.push(text(errorX, y + 15, 'kept', 'value-label'));
    }
    body.push('</g>');
  });
  const axisY = TOP + layers.length * ROW + 4;
  body.push(...horizontalAxis(macsX, axisY, MACS_WIDTH, (f) => count(f * max)));
  body.push(...horizontalAxis(errorX, axisY, ERROR_WIDTH, String));
  return svg(width, height, 'layer-chart', 'Per-layer MACs before and after compression, and the relative error of each rewritten weight', body);
}

/**
 * Held-out accuracy of every candidate tried against its MACs ratio; the chosen one is marked, candidates
 * outside the accuracy limit are hollow, and the limit is a dashed line.
 */
export function tradeoffChart(points: TradeoffPoint[], limitAccuracy?: number): string {
  const width = 640;
  const height = 360;
  const left = 70;
  const right = 20;
  const top = 30;
  const bottom = 50;
  const xs = points.map((p) => p.macsRatio);
  const ys = [...points.map((p) => p.accuracy), ...(limitAccuracy === undefined ? [] : [limitAccuracy])];
  const span = (values: number[]): [number, number] => {
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const pad = hi > lo ? (hi - lo) * 0.08 : Math.max(Math.abs(hi) * 0.05, 0.01);
    return [lo - pad, hi + pad];
  };
  const [x0, x1] = span(xs);
  const [y0, y1] = span(ys);
  const px = (v: number) => left + ((v - x0) / (x1 - x0)) * (width - left - right);
  const py = (v: number) => height - bottom - ((v - y0) / (y1 - y0)) * (height - top - bottom);
  const sorted = [...points].sort((a, b) => a.macsRatio - b.macsRatio);
  const body: string[] = [
    text(left, 18, 'Held-out top-1 accuracy of each candidate against its MACs (after ÷ before)', 'chart-heading'),
    `<line x1="${left}" y1="${height - bottom}" x2="${width - right}" y2="${height - bottom}" class="axis"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${height - bottom}" class="axis"/>`,
    `<polyline class="tradeoff-line" points="${sorted.map((p) => `${r(px(p.macsRatio))},${r(py(p.accuracy))}`).join(' ')}"/>`,
  ];
  if (limitAccuracy !== undefined) {
    body.push(`<line x1="${left}" y1="${r(py(limitAccuracy))}" x2="${width - right}" y2="${r(py(limitAccuracy))}" class="limit-line"><title>${escapeHtml(`accuracy limit ${(limitAccuracy * 100).toFixed(2)} %`)}</title></line>`);
  }
  for (const p of points) {
    const status = p.withinLimit === false ? ', outside the limit' : p.withinLimit === true ? ', within the limit' : '';
    const title = `MACs after ÷ before ${p.macsRatio.toFixed(3)}, accuracy ${(p.accuracy * 100).toFixed(2)} %${status}${p.chosen ? ' (chosen)' : ''}`;
    const cls = `tradeoff-point${p.chosen ? ' chosen' : ''}${p.withinLimit === false ? ' outside' : ''}`;
    body.push(`<circle cx="${r(px(p.macsRatio))}" cy="${r(py(p.accuracy))}" r="${p.chosen ? 7 : 5}" class="${cls}"><title>${escapeHtml(title)}</title></circle>`);
  }
  for (const f of [0, 0.5, 1]) {
    const xv = x0 + f * (x1 - x0);
    body.push(text(px(xv), height - bottom + 18, xv.toFixed(2), 'tick', 'middle'));
    const yv = y0 + f * (y1 - y0);
    body.push(text(left - 6, py(yv) + 4, `${(yv * 100).toFixed(1)} %`, 'tick', 'end'));
  }
  body.push(text(left + (width - left - right) / 2, height - 10, 'MACs after ÷ before', 'axis-label', 'middle'));
  return svg(width, height, 'tradeoff-chart', 'Trade-off between MACs and held-out accuracy over the candidates tried', body);
}
