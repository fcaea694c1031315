// Metrics extraction: the headline numbers of the engine's report and of the worker's measurement, as the
// job's metric rows (GET /v1/jobs/:id `metrics`, /v1/stats).
import type { MeasurementReport } from './verify.js';

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function finiteNumber(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

export interface MetricRow {
  name: string;
  value: number;
  unit: string | null;
}

/** Headline numbers of the engine report (and the measurement, when present) as metric rows. */
export function metricsFromReport(report: Record<string, unknown>): MetricRow[] {
  const rows: MetricRow[] = [];
  const add = (name: string, value: unknown, unit: string | null): void => {
    const v = finiteNumber(value);
    if (v !== undefined) rows.push({ name, value: v, unit });
  };
  const totals = isRecord(report.totals) ? report.totals : {};
  for (const kind of ['params', 'macs'] as const) {
    const t = isRecord(totals[kind]) ? totals[kind] : {};
    add(`${kind}_before`, t.before, kind === 'params' ? 'weights' : 'MACs');
    add(`${kind}_after`, t.after, kind === 'params' ? 'weights' : 'MACs');
    // Every *_reduction metric is before/after ("4.9× fewer"); the engine's totals.ratio is after/before
    // (the convention of the targetMacs option), so it is recomputed here rather than copied.
    const before = finiteNumber(t.before);
    const after = finiteNumber(t.after);
    if (before !== undefined && after !== undefined && after > 0) add(`${kind}_reduction`, before / after, 'x');
  }
  const accuracy = isRecord(report.accuracy) ? report.accuracy : null;
  if (accuracy) {
    for (const which of ['original', 'compressed', 'finetuned'] as const) {
      const section = isRecord(accuracy[which]) ? accuracy[which] : null;
      if (!section) continue;
      add(`top1_${which}`, section.top1, 'fraction');
      add(`top5_${which}`, section.top5, 'fraction');
      add(`agreement_${which}`, section.agreement, 'fraction');
    }
  }
  const finetune = isRecord(report.finetune) ? report.finetune : null;
  if (finetune) {
    add('finetune_wall_seconds', finetune.wallSeconds, 's');
    add('finetune_images_per_second', finetune.imagesPerSecond, 'images/s');
    add('finetune_steps', finetune.steps, 'steps');
  }
  const timings = isRecord(report.timings) ? report.timings : {};
  for (const [stage, seconds] of Object.entries(timings)) add(`stage_seconds_${stage}`, seconds, 's');
  return rows;
}

/** The Table-1 figures onnxruntime-node measured (latency, energy estimate) and the fidelity check. */
export function metricsFromMeasurement(m: MeasurementReport | null): MetricRow[] {
  if (!m) return [];
  const rows: MetricRow[] = [];
  const add = (name: string, value: unknown, unit: string | null): void => {
    const v = finiteNumber(value);
    if (v !== undefined) rows.push({ name, value: v, unit });
  };
  const t = m.table1;
  // Weights and MACs come from the engine's counter alone (params_*, macs_*); the measurement's own count
  // stays in the report, where test/verify*.test.ts cross-checks it, and never lands in the metrics twice.
  for (const [name, c, unit] of [
    ['latency_ms', t.latencyMs, 'ms'],
    ['energy_mj_estimate', t.energyMillijoulesEstimate, 'mJ'],
  ] as const) {
    add(`${name}_before`, c.before, unit);
    add(`${name}_after`, c.after, unit);
    add(`${name}_reduction`, c.ratio, 'x');
  }
  for (const l of m.latency) add(`speedup_batch${l.batch}`, l.speedup, 'x');
  add('max_relative_error', m.fidelity.compressed.maxRelativeError, 'fraction');
  add('top1_agreement', m.fidelity.compressed.top1Agreement, 'fraction');
  return rows;
}
