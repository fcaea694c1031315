// BENCHMARKS.md from the benchmark results: the tables and the goal lines, kept beside the harness so the quick
// run in test/bench.test.ts checks the layout.
import { caseLabel, type BenchCase, type BenchResults, type CaseResult } from './bench.js';
import { formatProfileTable, type LayerProfile } from './profile.js';
import type { MeasurementReport } from './verify.js';

const x = (v: number | undefined | null, digits = 2) => (v === undefined || v === null || !Number.isFinite(v) ? '—' : `${v.toFixed(digits)}×`);
const num = (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : String(v));
const giga = (v: number) => (v / 1e9).toFixed(3);
const mega = (v: number) => (v / 1e6).toFixed(2);

function speedupAt(m: MeasurementReport, batch: number) {
  return m.latency.find((l) => l.batch === batch);
}

function header(r: BenchResults, title: string): string[] {
  return [
    `${title} — command \`${r.command}\`; onnxruntime-node ${r.ortVersion}, CPU execution provider, `
      + `${r.settings.threads} intra-op thread(s), inter-op 1; CPU ${r.cpu} (${r.cores} cores); ${r.date.slice(0, 16).replace('T', ' ')} UTC; `
      + `${r.settings.runs} timed runs after ${r.settings.warmup} warm-up run(s) per model and batch, original and compressed interleaved; `
      + `load average ${r.loadAverageStart.map((v) => v.toFixed(1)).join('/')} at start, ${r.loadAverageEnd.map((v) => v.toFixed(1)).join('/')} at end.`,
    '',
  ];
}

const ruleLabel = (c: BenchCase) => (c.rule === 'budget' ? `budget 1/${c.targetMacsReduction}`
  : c.rule === 'latency' && c.targetLatency ? `latency ${c.targetLatency}` : c.rule);
const notMeasured = (r: CaseResult, columns: number) =>
  `| ${r.benchCase.model} | ${r.benchCase.inputSize} | ${ruleLabel(r.benchCase)} | not measured: ${r.error?.replace(/\|/g, '/').slice(0, 300)} ${'|'.repeat(columns - 3)}`;

/** Size and estimated energy: what the rewrite removed, counted on the ONNX graphs. */
function sizeRows(results: CaseResult[]): string[] {
  const rows = [
    '| network | input | rule | MACs before (G) | MACs after (G) | MACs reduction | weights before (M) | weights after (M) | weights reduction | energy reduction (estimate) | output rel. error (random weights) |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of results) {
    const m = r.measurement;
    if (!m) {
      rows.push(notMeasured(r, 11));
      continue;
    }
    const t = m.table1;
    rows.push(`| ${r.benchCase.model} | ${r.benchCase.inputSize} | ${ruleLabel(r.benchCase)} | ${giga(t.macs.before)} | ${giga(t.macs.after)} | `
      + `${x(t.macs.ratio)} | ${mega(t.weights.before)} | ${mega(t.weights.after)} | ${x(t.weights.ratio)} | `
      + `${x(t.energyMillijoulesEstimate.ratio)} | ${num(m.fidelity.compressed.maxRelativeError, 3)} |`);
  }
  return rows;
}

/** Measured speed beside the paper's. */
function speedRows(results: CaseResult[], batch: number): string[] {
  const rows = [
    `| network | rule | MACs reduction | batch 1: original / compressed (ms) | batch 1 speed-up | ÷ MACs reduction | batch 1 CPU-time speed-up | ÷ MACs reduction | batch ${batch} speed-up | ÷ MACs reduction | batch ${batch} CPU-time speed-up | paper: MACs reduction | paper: Galaxy S6 | paper: Titan X |`,
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of results) {
    const c = r.benchCase;
    const m = r.measurement;
    if (!m) {
      rows.push(notMeasured(r, 14).replace(` | ${c.inputSize} |`, ' |'));
      continue;
    }
    const b1 = speedupAt(m, 1);
    const bN = batch === 1 ? undefined : speedupAt(m, batch);
    const macs = m.table1.macs.ratio;
    const share = (v: number | null | undefined) => (v === null || v === undefined ? '—' : num(v / macs));
    rows.push(`| ${c.model} | ${ruleLabel(c)} | ${x(macs)} | `
      + `${b1 ? `${num(b1.original.medianMs, 1)} / ${num(b1.compressed.medianMs, 1)}` : '—'} | `
      + `${x(b1?.speedup)} | ${share(b1?.speedup)} | ${x(b1?.cpuSpeedup)} | ${share(b1?.cpuSpeedup)} | `
      + `${x(bN?.speedup)} | ${share(bN?.speedup)} | ${x(bN?.cpuSpeedup)} | `
      + `${x(c.paper?.macsReduction)} | ${x(c.paper?.galaxyS6)} | ${x(c.paper?.titanX)} |`);
  }
  return rows;
}

function compressionRows(results: CaseResult[]): string[] {
  const rows = [
    '| network | input | rule | engine command | exit | wall time (s) | peak memory (MiB) | engine summary |',
    '|---|---|---|---|---:|---:|---:|---|',
  ];
  for (const r of results) {
    const c = r.benchCase;
    rows.push(`| ${c.model} | ${c.inputSize} | ${c.rule}${r.compression.reused ? ' ↺' : ''} | \`${r.compression.command}\` | ${r.compression.exitCode} | `
      + `${num(r.compression.wallSeconds, 1)} | ${(r.compression.peakRssBytes / 2 ** 20).toFixed(0)} | ${r.compression.message.replace(/\|/g, '/')} |`);
  }
  return rows;
}

/** Issue 5's goals, checked against this run's numbers (stated, not judged by hand). */
function goalLines(r: BenchResults): string[] {
  const lines = ['## Against the goals', '',
    'Goals: VGG-16 ≥ 4.0× measured speed-up at ≥ 4.93× fewer MACs (batch 1); ≥ 0.8 of the MACs reduction on the other networks.', ''];
  for (const c of r.cases) {
    const m = c.measurement;
    const label = caseLabel(c.benchCase);
    if (!m) {
      lines.push(`- ${label}: not measured (${c.error}).`);
      continue;
    }
    const b1 = speedupAt(m, 1);
    if (!b1) continue;
    const macs = m.table1.macs.ratio;
    const share = b1.speedup / macs;
    const goal = c.benchCase.model === 'vgg16'
      ? `goal ≥ 4.0× at ≥ 4.93×: ${b1.speedup >= 4 && macs >= 4.93 * 0.98 ? 'met' : 'not met'}`
      : `goal ≥ 0.8 of the MACs reduction: ${share >= 0.8 ? 'met' : 'not met'}`;
    const cpu = b1.cpuSpeedup === null ? '' : ` (CPU time: ${x(b1.cpuSpeedup)} = ${num(b1.cpuSpeedup / macs)} of it)`;
    lines.push(`- ${label}: ${x(b1.speedup)} wall-clock at ${x(macs)} fewer MACs = ${num(share)} of the MACs reduction${cpu}; ${goal} (wall clock).`);
  }
  const rows = r.profile?.profile?.rows ?? [];
  const slow = rows.filter((row) => row.efficiency < 0.5);
  if (rows.length > 0) {
    const macsBefore = rows.reduce((a, row) => a + row.macs.original, 0);
    const macsAfter = rows.reduce((a, row) => a + row.macs.replacement, 0);
    const timeBefore = rows.reduce((a, row) => a + row.original.medianMs, 0);
    const timeAfter = rows.reduce((a, row) => a + row.replacementTime.medianMs, 0);
    lines.push('', `Per-layer (${caseLabel(r.profile!.on!)}): the rewritten layers alone go from ${num(timeBefore, 1)} ms to ${num(timeAfter, 1)} ms `
      + `(${x(timeBefore / timeAfter)}) for ${x(macsBefore / macsAfter)} fewer MACs; `
      + (slow.length > 0
        ? `${slow.length} of ${rows.length} layers lose more than half of their MACs gain: ${slow.map((row) => row.layer).join(', ')}.`
        : `no layer loses more than half of its MACs gain.`));
    // Amdahl: what the rewritten layers weigh in the whole network, in CPU time (steady under load).
    const on = r.profile!.on!;
    const whole = r.cases.find((c) => caseLabel(c.benchCase) === caseLabel(on))?.measurement?.latency.find((l) => l.batch === 1);
    const cpuSum = (pick: (row: LayerProfile['rows'][number]) => number | null) => rows.reduce((a, row) => a + (pick(row) ?? NaN), 0);
    const layersBefore = cpuSum((row) => row.original.cpuMedianMs);
    const layersAfter = cpuSum((row) => row.replacementTime.cpuMedianMs);
    if (whole && whole.original.cpuMedianMs !== null && whole.compressed.cpuMedianMs !== null && Number.isFinite(layersBefore + layersAfter)) {
      const restBefore = whole.original.cpuMedianMs - layersBefore;
      const restAfter = whole.compressed.cpuMedianMs - layersAfter;
      const totals = `CPU time per image, batch 1: the whole network ${num(whole.original.cpuMedianMs, 1)} → ${num(whole.compressed.cpuMedianMs, 1)} ms; `
        + `its rewritten layers, each timed alone, ${num(layersBefore, 1)} → ${num(layersAfter, 1)} ms`;
      lines.push('', restBefore >= 0 && restAfter >= 0
        ? `Where the time goes (${totals}; everything else, i.e. layers left as they were, activations, pooling and graph overhead, `
          + `${num(restBefore, 1)} → ${num(restAfter, 1)} ms). Layers timed alone run in their own sessions, so the split is approximate.`
        : `Where the time goes: not split (${totals}). The layers timed alone add up to more than the whole network, so no split `
          + `is given; possible causes, not measured separately: per-session input buffers, thread-pool hand-offs, spinning pool `
          + `threads counted in CPU time.`);
    }
  }
  return lines;
}

/** How each latency row's worker loop went (rounds, layers kept, structures the clock chose). */
function latencyLoopLines(results: CaseResult[]): string[] {
  const lines: string[] = [];
  for (const c of results) {
    const l = c.compression.latency;
    if (!l) continue;
    const rounds = l.rounds.map((round) => `targetMacs ${num(round.targetMacs, 3)} → predicted ${round.predictedRatio === null ? '?' : num(round.predictedRatio, 3)}`
      + ` (${round.keptSlow.length} layer(s) kept as slower, ${(round.structures ?? []).length} given a Tucker-1 structure by the clock)`).join('; ');
    lines.push(`The latency row of ${c.benchCase.model} went through the worker's own loop (planForLatency, as a \`rule: latency\` job does): `
      + `target latency ratio ${num(l.targetLatency, 3)}, ${l.rounds.length} round(s) of candidates timed in onnxruntime-node: ${rounds}; `
      + `${l.converged ? 'converged' : 'did not converge'}`
      // planForLatency reuses a finished loop's result.json in the same work dir (as a retried job does); a
      // loop that times a network takes seconds, so well under one means the timings are that earlier run's.
      + (l.seconds < 1 ? '; its timings are an earlier run\'s in the same work dir, reused' : ` in ${num(l.seconds, 1)} s before the compression itself`)
      + `.${l.note ? ` ${l.note}.` : ''}`, '');
  }
  return lines;
}

export function renderMarkdown(r: BenchResults): string {
  const compressed = [...r.cases, ...(r.rules?.results.filter((c) => !r.cases.includes(c)) ?? [])];
  const out: string[] = [
    '# Benchmarks',
    '',
    r.mode === 'quick'
      ? '_Quick mode: small inputs and few runs, to exercise the harness. Not for comparison with the paper._'
      : 'Written by `make bench` (`npm run bench`, benchmarks/run.ts). Every number below was measured by that run on the machine named; '
        + 'the paper\'s speed-ups are quoted from Kim et al., ICLR 2016, Table 2 for comparison. Networks are torchvision architectures '
        + '(VGG-S: the engine\'s Chatfield CNN-S) with random weights, so accuracy is not measured here; "output rel. error" is '
        + '‖y − ŷ‖/‖y‖ on random inputs before fine-tuning; random weights have no low-rank structure, so it says nothing '
        + 'about the error on a trained network.',
    '',
    '## Speed-up at the paper\'s MACs reductions',
    '',
    ...header(r, 'Measured'),
    ...speedRows(r.cases, r.settings.batch),
    '',
    'Speed-up = median wall-clock latency of the original ÷ that of the compressed model, timed interleaved in one process. '
      + 'CPU-time speed-up = the same ratio of the median CPU time the process spent per run: while other processes hold the cores, '
      + 'wall time grows with waiting (and more so for longer runs) but CPU time does not, so on a shared machine it is the '
      + 'steadier measure of the work saved; the two agree on an idle machine with one thread.',
    '',
    '## Weights, MACs and energy',
    '',
    ...sizeRows(r.cases),
    '',
    'MACs and weights are counted from each ONNX graph at the shapes onnxruntime produced (Conv, Gemm and MatMul MACs; '
      + 'all floating-point initializers as weights). Energy is an estimate (Horowitz ISSCC 2014, 45 nm: 4.6 pJ per fp32 MAC, '
      + '160 pJ per DRAM byte; weights read once, activations written and read once), not a measurement.',
    '',
    '## Compression time and peak memory',
    '',
    ...compressionRows(compressed),
    '',
    ...(compressed.some((c) => c.compression.reused)
      ? [`Rows marked ↺ were compressed by an earlier run of the harness in the same work dir (\`--reuse\`); their time and memory are from that run, on the same machine.`, '']
      : []),
  ];
  out.push(...latencyLoopLines(r.cases), ...goalLines(r), '');
  if (r.rules) {
    out.push(`## Rules on the same network: ${r.rules.model} at ${r.rules.inputSize}`, '', ...header(r, 'Measured'),
      ...speedRows(r.rules.results, r.settings.batch), '', ...sizeRows(r.rules.results), '');
    out.push(...latencyLoopLines(r.rules.results));
  }
  if (r.experiments) {
    const on = r.experiments.on;
    out.push(`## onnxruntime session options${on ? `: ${caseLabel(on)}` : ''}`, '');
    if (r.experiments.note) out.push(`${r.experiments.note}.`, '');
    if (on) {
      out.push(`Command \`${r.command}\`; batch 1; ${r.settings.runs} interleaved runs after ${r.settings.warmup} warm-up run(s); CPU ${r.cpu}; ${r.date.slice(0, 10)}.`, '',
        '| setting | threads | graph optimisation | execution mode | original (ms) | compressed (ms) | speed-up | original CPU time (ms) | compressed CPU time (ms) |',
        '|---|---:|---|---|---:|---:|---:|---:|---:|');
      for (const e of r.experiments.results) {
        const l = e.measurement?.latency[0];
        out.push(`| ${e.experiment.label} | ${e.experiment.threads} | ${e.experiment.graphOptimizationLevel} | ${e.experiment.executionMode} | `
          + (l
            ? `${num(l.original.medianMs, 1)} | ${num(l.compressed.medianMs, 1)} | ${x(l.speedup)} | `
              + `${num(l.original.cpuMedianMs ?? NaN, 1)} | ${num(l.compressed.cpuMedianMs ?? NaN, 1)} |`
            : `not measured: ${e.error} |||||`));
      }
      const measured = r.experiments.results.filter((e) => e.measurement?.latency[0]);
      const fastest = measured.sort((a, b) => a.measurement!.latency[0]!.compressed.medianMs - b.measurement!.latency[0]!.compressed.medianMs)[0];
      if (fastest) {
        out.push('', `Fastest compressed model in this run: "${fastest.experiment.label}" (${num(fastest.measurement!.latency[0]!.compressed.medianMs, 1)} ms median). `
          + `The service keeps the default (all optimisations, sequential, ORT_THREADS intra-op threads); load average during the run: `
          + `${r.loadAverageEnd.map((v) => v.toFixed(1)).join('/')} on ${r.cores} cores, so thread settings are measured under contention.`);
      }
      out.push('');
    }
  }
  if (r.profile) {
    const on = r.profile.on;
    out.push(`## Per-layer profile${on ? `: ${caseLabel(on)}` : ''}`, '');
    if (r.profile.note) out.push(`${r.profile.note}.`, '');
    out.push(`Each rewritten layer's original node and its replacement chain as standalone models at the layer's real input shape (batch 1), `
      + `timed interleaved; ${r.settings.threads} thread(s); CPU ${r.cpu}; ${r.date.slice(0, 10)}. ⚠ marks layers whose time fell by less than half as much as their MACs.`, '');
    out.push(r.profile.profile ? formatProfileTable(r.profile.profile) : `Not measured: ${r.profile.error}`, '');
  }
  return out.join('\n');
}
