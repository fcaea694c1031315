// Benchmark harness: export zoo networks, compress them with the engine at the paper's MACs
// reductions, and measure them with onnxruntime-node (verifyAndMeasure, profileLayers). Markdown
// rendering for BENCHMARKS.md lives here too so the table layout is tested with the quick run.
// benchmarks/run.ts is the command line around it.
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { runEngine, runEngineCommand, type EngineSettings } from './engine.js';
import { planForLatency, type LatencyPlanResult } from './latency.js';
import { profileLayers, type LayerProfile } from './profile.js';
import {
  verifyAndMeasure, type ExecutionMode, type GraphOptimizationLevel, type MeasurementReport,
} from './verify.js';

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
  /** the latency rule's compressed/original latency target (targetLatency of a job) */
  targetLatency?: number;
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
  /** the caller's environment: ENGINE_THREADS (or OMP_NUM_THREADS) sizes the engine's thread pools, all cores otherwise */
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
  /** rule latency: the worker's timing loop (the same planForLatency a job runs) before the compression */
  latency?: LatencyPlanResult & { seconds: number };
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

/** The engine as the worker runs it (engine.ts), with the engine tests' helpers importable, and no memory limit. */
function engine(settings: BenchSettings): EngineSettings {
  const dir = path.join(settings.repoRoot, 'engine');
  const threads = Number(settings.baseEnv.ENGINE_THREADS ?? settings.baseEnv.OMP_NUM_THREADS) || os.cpus().length;
  return { python: settings.python, pythonPath: [dir, path.join(dir, 'tests')], threads, memoryLimitMb: null };
}

/** The zoo export, cached by the engine tests' zoo_cache (shared, locked, written atomically). */
export async function exportZooModel(settings: BenchSettings, name: string, inputSize: number): Promise<string> {
  const script = 'import sys\nfrom zoo_cache import zoo_path\n'
    + 'print(zoo_path(sys.argv[1], 13, int(sys.argv[2]), dynamic_batch=sys.argv[3] == "1"))';
  const stdout = await runEngineCommand(engine(settings), {
    args: [],
    pythonArgs: ['-c', script, name, String(inputSize), settings.dynamicBatch ? '1' : '0'],
  });
  const lines = stdout.trim().split('\n');
  return lines[lines.length - 1]!;
}

function ruleArgs(c: BenchCase, latency?: LatencyPlanResult): string[] {
  if (c.rule === 'latency') {
    if (!latency) throw new RangeError(`case ${c.model}: the latency rule needs the worker's timing loop first`);
    return ['--rule', 'latency', '--target-macs', String(latency.targetMacs), '--latency-table', latency.latencyTable,
      '--target-latency', String(latency.targetLatency)];
  }
  if (c.rule === 'budget') {
    if (!c.targetMacsReduction) throw new RangeError(`case ${c.model}: the budget rule needs targetMacsReduction`);
    return ['--rule', 'budget', '--target-macs', (1 / c.targetMacsReduction).toFixed(6)];
  }
  return ['--rule', c.rule];
}

export function caseLabel(c: BenchCase): string {
  return `${c.model}-${c.inputSize}-${c.rule}${c.targetMacsReduction ? `-${c.targetMacsReduction}x` : ''}`
    + (c.targetLatency ? `-t${c.targetLatency}` : '');
}

export async function compressWithEngine(settings: BenchSettings, input: string, c: BenchCase): Promise<CompressionRun> {
  const label = caseLabel(c);
  const output = path.join(settings.workDir, `${label}.onnx`);
  const plan = path.join(settings.workDir, `${label}.plan.json`);
  const timing = path.join(settings.workDir, `${label}.rss.json`);
  const summary = path.join(settings.workDir, `${label}.summary.txt`);
  const readTiming = async () => JSON.parse(await readFile(timing, 'utf8')) as {
    exitCode: number; wallSeconds: number; peakRssBytes: number;
  };
  const latencyFile = path.join(settings.workDir, `${label}.latency.json`);
  if (settings.reuseCompressed) {
    const previous = await readTiming().catch(() => null);
    const latency = c.rule === 'latency'
      ? JSON.parse(await readFile(latencyFile, 'utf8').catch(() => 'null')) as CompressionRun['latency'] | null : undefined;
    if (previous && previous.exitCode === 0 && await exists(output) && latency !== null) {
      const message = await readFile(summary, 'utf8').catch(() => '(compressed by an earlier run)');
      const command = `python3 -m tuckerize compress ${path.basename(input)} -o ${path.basename(output)} ${ruleArgs(c, latency).join(' ')}`;
      return { command, ...previous, message, output, plan, reused: true, ...(latency ? { latency } : {}) };
    }
  }
  let latency: CompressionRun['latency'];
  if (c.rule === 'latency') {
    // The same loop a rule=latency job runs in the worker: the engine writes per-layer candidates,
    // onnxruntime-node times them, the engine predicts; targetMacs moves until the prediction meets the target.
    if (!c.targetLatency) throw new RangeError(`case ${c.model}: the latency rule needs targetLatency`);
    const started = performance.now();
    const result = await planForLatency({
      engine: engine(settings), modelPath: input, workDir: path.join(settings.workDir, `${label}.latency`),
      targetLatency: c.targetLatency, threads: settings.threads, runs: settings.runs, warmup: settings.warmup,
      seed: settings.seed,
    });
    latency = { ...result, seconds: (performance.now() - started) / 1000 };
    await writeFile(latencyFile, JSON.stringify(latency, null, 2));
  }
  const command = `python3 -m tuckerize compress ${path.basename(input)} -o ${path.basename(output)} ${ruleArgs(c, latency).join(' ')}`;
  const wrapper = path.join(settings.repoRoot, 'benchmarks', 'peak_rss.py');
  const exit = await runEngine(engine(settings), {
    args: ['compress', input, '-o', output, '--plan-out', plan, ...ruleArgs(c, latency)],
    // peak_rss.py runs the engine and records its wall time and peak resident memory.
    wrap: (command) => [settings.python, wrapper, timing, '--', ...command],
    collectStdout: 1024 * 1024,
  });
  const said = exit.code === 0 ? exit.stdout ?? '' : exit.error?.detail ?? exit.stderrTail;
  const message = (said.trim().split('\n').pop() ?? '').replaceAll(settings.workDir + path.sep, '');
  await writeFile(summary, message);
  const measured = await readTiming().catch(() => ({ exitCode: -1, wallSeconds: 0, peakRssBytes: 0 }));
  return { command, ...measured, message, output, plan, ...(latency ? { latency } : {}) };
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
      // The latency rule is asked for the time the budget rule's MACs would promise if time followed MACs.
      const c: BenchCase = {
        model: ref.model, inputSize: ref.inputSize, rule,
        ...(rule === 'budget' ? { targetMacsReduction: ref.targetMacsReduction } : {}),
        ...(rule === 'latency' ? { targetLatency: Number((1 / ref.targetMacsReduction).toFixed(4)) } : {}),
      };
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

export { renderMarkdown } from './bench-markdown.js';
