// The demo's printout of a job report: the per-layer plan and the paper's Table 1 as text tables.

export type Json = Record<string, unknown>;
export const rec = (v: unknown): Json => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : {});
export const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

export function formatCount(n: number | null): string {
  if (n === null) return '—';
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return String(n);
}

const pct = (v: number | null): string => (v === null ? '—' : `${(v * 100).toFixed(2)} %`);
const fixed = (v: number | null, digits: number): string => (v === null ? '—' : v.toFixed(digits));
const times = (before: number | null, after: number | null): string =>
  before !== null && after !== null && after > 0 ? `${(before / after).toFixed(2)}×` : '—';

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** One row per layer of the engine's plan: what it did and what it saved. */
export function formatPlan(report: Json): string {
  const layers = Array.isArray(report.layers) ? report.layers.map(rec) : [];
  const rows = layers.map((l) => {
    const params = rec(l.params);
    const macs = rec(l.macs);
    const ranks = Array.isArray(l.ranks) && l.ranks.length > 0 ? l.ranks.join('/') : '—';
    const shape = Array.isArray(l.weightShape) ? l.weightShape.join('×') : '';
    return [
      String(l.name ?? '?'),
      `${String(l.op ?? '')} ${shape}`.trim(),
      String(l.kind ?? ''),
      ranks,
      `${formatCount(num(params.before))} → ${formatCount(num(params.after))}`,
      `${formatCount(num(macs.before))} → ${formatCount(num(macs.after))}`,
      l.relError === null || l.relError === undefined ? '—' : fixed(num(l.relError), 3),
    ];
  });
  return table(['layer', 'op / weight', 'kind', 'ranks (out/in)', 'weights', 'MACs', '‖W−Ŵ‖/‖W‖'], rows);
}

/**
 * The paper's Table 1: original / compressed / compressed + fine-tuned × weights, MACs, top-1, latency,
 * energy. Weights and MACs come from the engine's plan, top-1 from its held-out evaluation, latency from
 * onnxruntime-node (median, interleaved), energy from the stated estimate model.
 */
export function formatTable1(report: Json): string {
  const totals = rec(report.totals);
  const params = rec(totals.params);
  const macs = rec(totals.macs);
  const accuracy = rec(report.accuracy);
  const m = rec(report.measurement);
  const t1 = rec(m.table1);
  const latency = rec(t1.latencyMs);
  const energy = rec(t1.energyMillijoulesEstimate);
  const finetuned = accuracy.finetuned !== null && accuracy.finetuned !== undefined;
  const top1 = (which: string) => num(rec(accuracy[which]).top1);
  // With calibration (engine/tuckerize/calibrate.py) the report holds the rewrite's top-1 without and with it.
  const calibration = rec(rec(report.calibration).heldout);
  const calibrated = Object.keys(calibration).length > 0;
  const compressedRow = (label: string, value: number | null) =>
    [label, formatCount(num(params.after)), formatCount(num(macs.after)), pct(value), fixed(num(latency.after), 3), fixed(num(energy.after), 4)];
  const rows: string[][] = [
    ['original', formatCount(num(params.before)), formatCount(num(macs.before)), pct(top1('original')), fixed(num(latency.before), 3), fixed(num(energy.before), 4)],
    calibrated
      ? compressedRow('compressed (rewrite only)', num(rec(calibration.withoutCalibration).top1))
      : compressedRow('compressed', top1('compressed')),
  ];
  if (calibrated) rows.push(compressedRow('compressed + calibrated', top1('compressed')));
  if (finetuned) {
    rows.push(['compressed + fine-tuned', formatCount(num(params.after)), formatCount(num(macs.after)), pct(top1('finetuned')), fixed(num(latency.after), 3), fixed(num(energy.after), 4)]);
  }
  const finalTop1 = finetuned ? top1('finetuned') : top1('compressed');
  const original = top1('original');
  rows.push([
    'ratio / change',
    times(num(params.before), num(params.after)),
    times(num(macs.before), num(macs.after)),
    original !== null && finalTop1 !== null ? `${((finalTop1 - original) * 100).toFixed(2)} pt` : '—',
    times(num(latency.before), num(latency.after)),
    times(num(energy.before), num(energy.after)),
  ]);
  const lines = [table(['model', 'weights', 'MACs', 'top-1', 'latency ms', 'energy mJ (est.)'], rows)];
  const runtime = rec(m.runtime);
  if (Object.keys(runtime).length > 0) {
    lines.push(
      `latency: onnxruntime-node ${String(runtime.version ?? '')}, CPU (${String(runtime.cpu ?? '?')}), ` +
        `${String(runtime.intraOpNumThreads ?? '?')} thread(s), batch 1, median of interleaved runs`,
    );
  }
  const est = rec(rec(m.energy).original);
  if (typeof est.statement === 'string') lines.push(`energy is an ESTIMATE, not a measurement: ${est.statement}`);
  if (accuracy.samples !== undefined) {
    lines.push(`top-1: ${String(accuracy.samples)} held-out images (${String(accuracy.split ?? 'held-out split')})`);
  }
  const kept = (Array.isArray(report.layers) ? report.layers : []).filter((l) => String(rec(l).reason ?? '').startsWith('layer selection'));
  lines.push(
    `method: ${String(report.method ?? 'improved')}` +
      (kept.length > 0 ? `; ${kept.length} layer(s) kept by layer selection (small saving, large error)` : '') +
      (calibrated ? `; calibrated on ${String(rec(report.calibration).samples)} training images (no labels)` : ''),
  );
  const search = rec(report.search);
  if (typeof search.message === 'string') {
    lines.push(`accuracy target (≤ ${String(search.maxAccuracyDrop)} points): ${search.met ? 'met' : 'NOT met'}: ${search.message}`);
    // The trade-off curve: every candidate tried, after its brief fine-tune, on the job's held-out split.
    for (const point of Array.isArray(report.tradeoff) ? report.tradeoff.map(rec) : []) {
      const ratio = num(point.macsRatio);
      const drop = num(point.drop);
      const versus = drop === null ? '—' : `${Math.abs(drop).toFixed(2)} points ${drop >= 0 ? 'below' : 'above'}`;
      lines.push(
        `  candidate ${String(point.candidate)}: ${ratio ? (1 / ratio).toFixed(2) : '?'}× fewer MACs, top-1 ` +
          `${pct(num(point.accuracy))} (${versus}), ` +
          `${point.withinLimit ? 'within' : 'outside'} the limit`,
      );
    }
  }
  const ft = rec(report.finetune);
  if (num(ft.steps) !== null) {
    lines.push(
      `fine-tuning: ${String(ft.steps)} steps (${fixed(num(ft.epochs), 2)} epochs) in ${fixed(num(ft.wallSeconds), 1)} s, ` +
        `${fixed(num(ft.imagesPerSecond), 0)} images/s`,
    );
  }
  return lines.join('\n');
}
