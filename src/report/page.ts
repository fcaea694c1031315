// The job report as one self-contained HTML page: the paper's Table 1 (weights, MACs, accuracy, latency,
// estimated energy: before, after, ratio), a per-layer chart and, when the job searched for an accuracy
// target, the trade-off curve. Everything is generated here as text: no script, no external resource, one
// stylesheet whose hash the Content-Security-Policy names, every value from the report escaped.
import { createHash } from 'node:crypto';
import { layerChart, tradeoffChart, type LayerRow, type TradeoffPoint } from './charts.js';
import { count, escapeHtml, fixed, num, percent, rec, times } from './format.js';

const STYLE = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 960px; color: #1d2330; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; }
.meta { color: #5a6273; margin-top: 0; }
table { border-collapse: collapse; margin-top: 0.5rem; }
th, td { padding: 0.3rem 0.9rem; border-bottom: 1px solid #dde1e8; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #5a6273; font-size: 0.9em; }
svg { display: block; margin-top: 0.5rem; max-width: 100%; height: auto; }
.chart-heading { font-size: 13px; font-weight: 600; fill: #1d2330; }
.layer-label, .value-label, .tick, .legend-text, .axis-label { font-size: 11px; fill: #3b4252; }
.bar-before { fill: #b8bfcc; }
.bar-after { fill: #2f6fd6; }
.bar-error { fill: #d8782f; }
.axis { stroke: #8a92a3; stroke-width: 1; }
.tradeoff-line { fill: none; stroke: #2f6fd6; stroke-width: 1.5; }
.tradeoff-point { fill: #2f6fd6; }
.tradeoff-point.chosen { fill: #d8782f; }
.tradeoff-point.outside { fill: #ffffff; stroke: #2f6fd6; stroke-width: 1.5; }
.limit-line { stroke: #b03a2e; stroke-width: 1; stroke-dasharray: 4 3; }
`;

/** The Content-Security-Policy the page is served with: nothing may load, only its own stylesheet applies. */
export const REPORT_PAGE_CSP = [
  "default-src 'none'",
  `style-src 'sha256-${createHash('sha256').update(STYLE).digest('base64')}'`,
  "img-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

interface Table1Row {
  label: string;
  before: string;
  after: string;
  ratio: string;
}

const beforeAfter = (value: unknown): { before?: number; after?: number } => {
  const v = rec(value);
  return { before: num(v.before), after: num(v.after) };
};
const ratioOf = (before?: number, after?: number): number | undefined => (before !== undefined && after !== undefined && after > 0 ? before / after : undefined);

function table1(report: Record<string, unknown>): Table1Row[] {
  const totals = rec(report.totals);
  const table = rec(rec(report.measurement).table1);
  const rows: Table1Row[] = [];
  const weights = beforeAfter(totals.params);
  rows.push({ label: 'Weights', before: count(weights.before), after: count(weights.after), ratio: times(ratioOf(weights.before, weights.after)) });
  const macs = beforeAfter(totals.macs);
  rows.push({ label: 'MACs per image', before: count(macs.before), after: count(macs.after), ratio: times(ratioOf(macs.before, macs.after)) });
  const accuracy = rec(report.accuracy);
  const original = num(rec(accuracy.original).top1);
  const final = num(rec(accuracy.finetuned).top1) ?? num(rec(accuracy.compressed).top1);
  const change = original !== undefined && final !== undefined ? `${((final - original) * 100).toFixed(2)} points` : '—';
  rows.push({ label: 'Top-1 accuracy', before: percent(original), after: percent(final), ratio: change });
  const unfinetuned = num(rec(accuracy.finetuned).top1) !== undefined ? num(rec(accuracy.compressed).top1) : undefined;
  if (unfinetuned !== undefined && original !== undefined) {
    rows.push({ label: 'Top-1 before fine-tuning', before: percent(original), after: percent(unfinetuned), ratio: `${((unfinetuned - original) * 100).toFixed(2)} points` });
  }
  const latency = beforeAfter(table.latencyMs);
  rows.push({ label: 'Latency, batch 1 (ms)', before: fixed(latency.before, 3), after: fixed(latency.after, 3), ratio: times(ratioOf(latency.before, latency.after)) });
  const energy = beforeAfter(table.energyMillijoulesEstimate);
  rows.push({ label: 'Energy, estimated (mJ)', before: fixed(energy.before, 3), after: fixed(energy.after, 3), ratio: times(ratioOf(energy.before, energy.after)) });
  return rows;
}

export function layerRows(report: Record<string, unknown>): LayerRow[] {
  const layers = Array.isArray(report.layers) ? report.layers.map(rec) : [];
  return layers.map((layer, i) => {
    const macs = beforeAfter(layer.macs);
    return {
      label: typeof layer.name === 'string' && layer.name !== '' ? layer.name : `layer ${i}`,
      op: typeof layer.op === 'string' ? layer.op : '?',
      kind: typeof layer.kind === 'string' ? layer.kind : '?',
      macsBefore: macs.before ?? 0,
      macsAfter: macs.after ?? macs.before ?? 0,
      relError: layer.kind === 'keep' ? undefined : num(layer.relError),
    };
  });
}

/**
 * Candidates of an accuracy-target search (report.tradeoff: macsRatio = MACs after ÷ before, accuracy as a
 * fraction); the chosen one is report.search.chosen, and report.search gives the accuracy limit.
 */
export function tradeoff(report: Record<string, unknown>): { points: TradeoffPoint[]; limitAccuracy: number | undefined } {
  const search = rec(report.search);
  const source = Array.isArray(report.tradeoff) ? report.tradeoff : rec(report.tradeoff).candidates;
  const points: TradeoffPoint[] = [];
  for (const entry of Array.isArray(source) ? source.map(rec) : []) {
    const macsRatio = num(entry.macsRatio);
    const accuracy = num(entry.accuracy) ?? num(entry.top1);
    if (macsRatio === undefined || accuracy === undefined) continue;
    const chosen = entry.chosen === true || (entry.candidate !== undefined && entry.candidate === search.chosen);
    points.push({ macsRatio, accuracy, chosen, withinLimit: typeof entry.withinLimit === 'boolean' ? entry.withinLimit : undefined });
  }
  const original = num(search.originalAccuracy);
  const drop = num(search.maxAccuracyDrop);
  return { points, limitAccuracy: original !== undefined && drop !== undefined ? original - drop / 100 : undefined };
}

export interface ReportPageJob {
  id: string;
  modelName: string | null;
}

export function renderReportPage(report: Record<string, unknown>, job: ReportPageJob): string {
  const rule = typeof report.rule === 'string' ? report.rule : '?';
  const rows = table1(report);
  const layers = layerRows(report);
  const curve = tradeoff(report);
  const runtime = rec(rec(report.measurement).runtime);
  const measuredWith = typeof runtime.name === 'string'
    ? `Latency measured with ${runtime.name} ${typeof runtime.version === 'string' ? runtime.version : ''} on ${typeof runtime.cpu === 'string' ? runtime.cpu : 'the worker CPU'}, ${num(runtime.intraOpNumThreads) ?? '?'} thread(s), median of interleaved runs.`
    : 'No onnxruntime measurement in this report.';
  const title = `Compression report — job ${job.id}`;
  const body = [
    `<h1>${escapeHtml(title)}</h1>`,
    `<p class="meta">Model ${escapeHtml(job.modelName ?? '?')} · rule ${escapeHtml(rule)} · ${layers.length} layers planned</p>`,
    '<h2>Table 1</h2>',
    '<table id="table1"><thead><tr><th></th><th>Before</th><th>After</th><th>Ratio</th></tr></thead><tbody>',
    ...rows.map((row) => `<tr><td>${escapeHtml(row.label)}</td><td>${escapeHtml(row.before)}</td><td>${escapeHtml(row.after)}</td><td>${escapeHtml(row.ratio)}</td></tr>`),
    '</tbody></table>',
    `<p class="note">Weights and MACs are the engine's counts; ratios are before ÷ after (accuracy: the change). ${escapeHtml(measuredWith)} Energy is an estimate from MACs and memory traffic, not a measurement.</p>`,
    '<h2>Per layer</h2>',
    layers.length > 0 ? layerChart(layers) : '<p class="note">The report lists no layers.</p>',
    ...(curve.points.length > 0
      ? [
        '<h2>Trade-off</h2>',
        tradeoffChart(curve.points, curve.limitAccuracy),
        typeof rec(report.search).message === 'string' ? `<p class="note">${escapeHtml(rec(report.search).message as string)}</p>` : '',
      ]
      : []),
  ];
  return [
    '<!DOCTYPE html>',
    '<html lang="en">',
    '<head>',
    '<meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>${escapeHtml(title)}</title>`,
    `<style>${STYLE}</style>`,
    '</head>',
    '<body>',
    ...body,
    '</body>',
    '</html>',
    '',
  ].join('\n');
}
