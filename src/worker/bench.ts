// Benchmark harness: export zoo networks, compress them with the engine at the paper's MACs
// reductions, and measure them with onnxruntime-node (verifyAndMeasure, profileLayers). Markdown
// rendering for BENCHMARKS.md lives here too so the table layout is tested with the quick run.
// benchmarks/run.ts is the command line around it.
import { execFile } from 'node:child_process';
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { formatProfileTable, profileLayers, type LayerProfile } from './profile.js';
import {
  verifyAndMeasure, type ExecutionMode, type GraphOptimizationLevel, type MeasurementReport,
} from './verify.js';

const execFileAsync = promisify(execFile);

export interface PaperSpeedup {
  /** the MACs reduction Kim et al. 2016 report for the network (Table 1/2) */
  macsReduction: number;
  galaxyS6: number;
  titanX: number;
}

export interface BenchCase {
  model: string;
  inputSize: number;
  rule: 'vbmf' | 'budget' | 'latency';
  /** MACs reduction asked of the budget rule (target-macs = 1 / this) */
  targetMacsReduction?: number;
  paper?: PaperSpeedup;
}

export interface SessionExperiment {
  label: string;
  threads: number;
  graphOptimizationLevel: GraphOptimizationLevel;
  executionMode: ExecutionMode;
}

export interface BenchSettings {
  python: string;
  repoRoot: string;
  /** where compressed models, plans and timing files go */
  workDir: string;
  /** environment for the engine (PYTHONPATH is set on top of it) */
  baseEnv: NodeJS.ProcessEnv;
  threads: number;
  batch: number;
  runs: number;
  warmup: number;
  seed: number;
  dynamicBatch: boolean;
  /** take compressed models, their timings and peak memory from an earlier run in workDir */
  reuseCompressed: boolean;
  log: (line: string) => void;
}

export interface CompressionRun {
  command: string;
  exitCode: number;
  wallSeconds: number;
  peakRssBytes: number;
  /** the engine's one-line summary or its error */
  message: string;
  /** taken from an earlier run in the same work dir (--reuse): time and memory are that run's */
  reused?: boolean;
  output: string;
  plan: string;
}

export interface CaseResult {
  benchCase: BenchCase;
  originalPath: string;
  compression: CompressionRun;
  measurement: MeasurementReport | null;
  /** why no measurement, when compression or verification failed */
  error: string | null;
}

export interface ExperimentResult {
  experiment: SessionExperiment;
  measurement: MeasurementReport | null;
  error: string | null;
}

export interface BenchResults {
  mode: 'full' | 'quick';
  command: string;
  date: string;
  cpu: string;
  cores: number;
  loadAverageStart: number[];
  loadAverageEnd: number[];
  ortVersion: string;
  settings: Pick<BenchSettings, 'threads' | 'batch' | 'runs' | 'warmup' | 'seed'>;
  cases: CaseResult[];
  rules: { model: string; inputSize: number; results: CaseResult[] } | null;
  experiments: { on: BenchCase | null; note: string | null; results: ExperimentResult[] } | null;
  profile: { on: BenchCase | null; note: string | null; profile: LayerProfile | null; error: string | null } | null;
}

export function cpuModel(): string {
  return os.cpus()[0]?.model.trim() ?? 'unknown CPU';
}

function engineEnv(settings: BenchSettings): NodeJS.ProcessEnv {
  const engine = path.join(settings.repoRoot, 'engine');
  return { ...settings.baseEnv, PYTHONPATH: [engine, path.join(engine, 'tests')].join(path.delimiter) };
}

/** The zoo export, cached by the engine tests' zoo_cache (shared, locked, written atomically). */
export async function exportZooModel(settings: BenchSettings, name: string, inputSize: number): Promise<string> {
  const script = 'import sys\nfrom zoo_cache import zoo_path\n'
    + 'print(zoo_path(sys.argv[1], 13, int(sys.argv[2]), dynamic_batch=sys.argv[3] == "1"))';
  const { stdout } = await execFileAsync(
    settings.python, ['-c', script, name, String(inputSize), settings.dynamicBatch ? '1' : '0'],
    { env: engineEnv(settings), maxBuffer: 16 * 1024 * 1024 },
  );
  const lines = stdout.trim().split('\n');
  return lines[lines.length - 1]!;
}

function ruleArgs(c: BenchCase): string[] {
  if (c.rule === 'budget') {
    if (!c.targetMacsReduction) throw new RangeError(`case ${c.model}: the budget rule needs targetMacsReduction`);
    return ['--rule', 'budget', '--target-macs', (1 / c.targetMacsReduction).toFixed(6)];
  }
  return ['--rule', c.rule];
}

export function caseLabel(c: BenchCase): string {
  return `${c.model}-${c.inputSize}-${c.rule}${c.targetMacsReduction ? `-${c.targetMacsReduction}x` : ''}`;
}

export async function compressWithEngine(settings: BenchSettings, input: string, c: BenchCase): Promise<CompressionRun> {
  const label = caseLabel(c);
  const output = path.join(settings.workDir, `${label}.onnx`);
  const plan = path.join(settings.workDir, `${label}.plan.json`);
  const timing = path.join(settings.workDir, `${label}.rss.json`);
  const summary = path.join(settings.workDir, `${label}.summary.txt`);
  const command = `python3 -m tuckerize compress ${path.basename(input)} -o ${path.basename(output)} ${ruleArgs(c).join(' ')}`;
  const readTiming = async () => JSON.parse(await readFile(timing, 'utf8')) as {
    exitCode: number; wallSeconds: number; peakRssBytes: number;
  };
  if (settings.reuseCompressed) {
    const previous = await readTiming().catch(() => null);
    if (previous && previous.exitCode === 0 && await exists(output)) {
      const message = await readFile(summary, 'utf8').catch(() => '(compressed by an earlier run)');
      return { command, ...previous, message, output, plan, reused: true };
    }
  }
  const engineArgs = ['-m', 'tuckerize', 'compress', input, '-o', output, '--plan-out', plan, ...ruleArgs(c)];
  const wrapper = path.join(settings.repoRoot, 'benchmarks', 'peak_rss.py');
  let message = '';
  try {
    const { stdout } = await execFileAsync(settings.python, [wrapper, timing, '--', settings.python, ...engineArgs], {
      env: engineEnv(settings), maxBuffer: 64 * 1024 * 1024,
    });
    message = stdout.trim().split('\n').pop() ?? '';
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    message = (e.stderr || e.message).trim().split('\n').pop() ?? e.message;
  }
  message = message.replaceAll(settings.workDir + path.sep, '');
  await writeFile(summary, message);
  const measured = await readTiming().catch(() => ({ exitCode: -1, wallSeconds: 0, peakRssBytes: 0 }));
  return { command, ...measured, message, output, plan };
}

const exists = (p: string) => access(p).then(() => true, () => false);

async function runCase(settings: BenchSettings, c: BenchCase): Promise<CaseResult> {
  settings.log(`[bench] ${caseLabel(c)}: export`);
  let originalPath: string;
  try {
    originalPath = await exportZooModel(settings, c.model, c.inputSize);
  } catch (err) {
    const message = ((err as { stderr?: string }).stderr || (err as Error).message).trim().split('\n').pop() ?? '';
    const compression = { command: `export_zoo_model('${c.model}')`, exitCode: -1, wallSeconds: 0, peakRssBytes: 0, message, output: '', plan: '' };
    return { benchCase: c, originalPath: '', compression, measurement: null, error: `zoo export failed: ${message}` };
  }
  settings.log(`[bench] ${caseLabel(c)}: compress`);
  const compression = await compressWithEngine(settings, originalPath, c);
  if (compression.exitCode !== 0) {
    return { benchCase: c, originalPath, compression, measurement: null, error: `engine exit ${compression.exitCode}: ${compression.message}` };
  }
  settings.log(`[bench] ${caseLabel(c)}: measure (${compression.wallSeconds.toFixed(1)} s to compress)`);
  try {
    const measurement = await verifyAndMeasure({
      originalPath,
      compressedPath: compression.output,
      threads: settings.threads,
      batch: settings.batch,
      runs: settings.runs,
      warmup: settings.warmup,
      seed: settings.seed,
    });
    return { benchCase: c, originalPath, compression, measurement, error: null };
  } catch (err) {
    return { benchCase: c, originalPath, compression, measurement: null, error: (err as Error).message };
  }
}

/** A budget case of the plan, by network, input size and MACs reduction. */
export interface CaseRef {
  model: string;
  inputSize: number;
  targetMacsReduction: number;
}

export interface BenchPlan {
  mode: 'full' | 'quick';
  command: string;
  cases: BenchCase[];
  /** one model compressed with each rule in the same run */
  rules: CaseRef | null;
  /** session-option variants, measured on the first of these cases that compressed */
  experiments: { on: CaseRef[]; variants: SessionExperiment[] } | null;
  /** per-layer profile of the first of these cases that compressed */
  profile: { on: CaseRef[] } | null;
}

export async function runBenchmarks(settings: BenchSettings, plan: BenchPlan): Promise<BenchResults> {
  await mkdir(settings.workDir, { recursive: true });
  const loadAverageStart = os.loadavg();
  const cases: CaseResult[] = [];
  for (const c of plan.cases) cases.push(await runCase(settings, c));
  const findBudget = (ref: CaseRef) => cases.find(
    (r) => r.benchCase.model === ref.model && r.benchCase.inputSize === ref.inputSize && r.benchCase.rule === 'budget'
      && r.benchCase.targetMacsReduction === ref.targetMacsReduction,
  );
  /** The first preferred case that compressed, and a note naming the preferred ones that did not. */
  const pick = (refs: CaseRef[]): { base: CaseResult | null; note: string | null } => {
    const failed: string[] = [];
    for (const ref of refs) {
      const found = findBudget(ref);
      if (found && found.compression.exitCode === 0) {
        return { base: found, note: failed.length > 0 ? `${failed.join(', ')} did not compress; measured on ${caseLabel(found.benchCase)} instead` : null };
      }
      failed.push(`${ref.model} at ${ref.inputSize}`);
    }
    return { base: null, note: `none of ${failed.join(', ')} compressed` };
  };

  let rules: BenchResults['rules'] = null;
  if (plan.rules) {
    const ref = plan.rules;
    const results: CaseResult[] = [];
    for (const rule of ['vbmf', 'budget', 'latency'] as const) {
      const c: BenchCase = { model: ref.model, inputSize: ref.inputSize, rule, ...(rule === 'budget' ? { targetMacsReduction: ref.targetMacsReduction } : {}) };
      results.push((rule === 'budget' && findBudget(ref)) || await runCase(settings, c));
    }
    rules = { model: ref.model, inputSize: ref.inputSize, results };
  }

  let experiments: BenchResults['experiments'] = null;
  if (plan.experiments) {
    const { base, note } = pick(plan.experiments.on);
    const results: ExperimentResult[] = [];
    for (const experiment of plan.experiments.variants) {
      if (!base) break;
      settings.log(`[bench] session experiment ${experiment.label}`);
      try {
        const measurement = await verifyAndMeasure({
          originalPath: base.originalPath, compressedPath: base.compression.output,
          threads: experiment.threads, batch: 1, runs: settings.runs, warmup: settings.warmup, seed: settings.seed,
          graphOptimizationLevel: experiment.graphOptimizationLevel, executionMode: experiment.executionMode, samples: 1,
        });
        results.push({ experiment, measurement, error: null });
      } catch (err) {
        results.push({ experiment, measurement: null, error: (err as Error).message });
      }
    }
    experiments = { on: base?.benchCase ?? null, note, results };
  }

  let profile: BenchResults['profile'] = null;
  if (plan.profile) {
    const { base, note } = pick(plan.profile.on);
    if (!base) {
      profile = { on: null, note, profile: null, error: note };
    } else {
      settings.log(`[bench] per-layer profile of ${caseLabel(base.benchCase)}`);
      try {
        const p = await profileLayers({
          originalPath: base.originalPath, compressedPath: base.compression.output, planPath: base.compression.plan,
          threads: settings.threads, runs: settings.runs, warmup: settings.warmup, seed: settings.seed,
        });
        profile = { on: base.benchCase, note, profile: p, error: null };
      } catch (err) {
        profile = { on: base.benchCase, note, profile: null, error: (err as Error).message };
      }
    }
  }

  return {
    mode: plan.mode,
    command: plan.command,
    date: new Date().toISOString(),
    cpu: cpuModel(),
    cores: os.cpus().length,
    loadAverageStart,
    loadAverageEnd: os.loadavg(),
    ortVersion: ort.env.versions.node ?? ort.env.versions.common,
    settings: { threads: settings.threads, batch: settings.batch, runs: settings.runs, warmup: settings.warmup, seed: settings.seed },
    cases,
    rules,
    experiments,
    profile,
  };
}

// ---------------------------------------------------------------- markdown

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

const ruleLabel = (c: BenchCase) => (c.rule === 'budget' ? `budget 1/${c.targetMacsReduction}` : c.rule);
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
  out.push(...goalLines(r), '');
  if (r.rules) {
    out.push(`## Rules on the same network: ${r.rules.model} at ${r.rules.inputSize}`, '', ...header(r, 'Measured'),
      ...speedRows(r.rules.results, r.settings.batch), '', ...sizeRows(r.rules.results), '');
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
