// The latency rule's judge: ONNX Runtime times each layer the engine would rewrite, original node against
// replacement chain, at the layer's real input shape, and the engine keeps the layers whose replacement
// is not at least 5 % faster (engine/tuckerize/plan.py, rule 'latency').
//
// The split: `python3 -m tuckerize candidates` writes one standalone model per side and layer plus
// candidates.json; timeCandidates() times them here and writes latency-table.json beside them; the engine
// reads that table back (job option `latencyTable`). For `targetLatency` (compressed/original latency),
// planForLatency() iterates: candidates at a MACs target → timing → the engine's predicted latency ratio
// (`analyze --rule latency --json`) → targetMacs scaled by targetLatency / predicted → again, at most
// maxRounds times; the round whose prediction lies closest to the target gives the job its options.
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { z } from 'zod';
import type { EngineJobOptions, JobOptions } from '../contract/job-options.js';
import { BadInputError, EngineCrashError, runEngineCommand, type EngineSettings } from './engine.js';
import {
  fillNormal, latencyStats, MIN_TIMED_RUNS, ratioOf, seededUniform, sessionOptions, type GraphOptimizationLevel, type LatencyStats,
} from './verify.js';

export const CANDIDATES_FILE = 'candidates.json';
export const LATENCY_TABLE_FILE = 'latency-table.json';
/** A replacement must be at least this many times as fast to be worth its accuracy cost (plan.py's rule). */
export const LATENCY_MIN_SPEEDUP = 1.05;
const TABLE_VERSION = 1;

/** File names only: candidates.json must not point the worker outside its directory. */
const fileName = z.string().regex(/^[A-Za-z0-9_.-]+\.onnx$/, 'a bare .onnx file name');

const candidatesSchema = z.object({
  inputShape: z.array(z.number().int().positive()),
  layers: z.array(z.object({
    name: z.string(),
    kind: z.string(),
    ranks: z.array(z.number().int()),
    inputName: z.string(),
    dtype: z.enum(['float32', 'float64']),
    inputShape: z.array(z.number().int().positive()),
    macs: z.object({ before: z.number().nullable(), after: z.number().nullable() }),
    orig: fileName,
    repl: fileName,
  })),
}).passthrough();
export type Candidates = z.infer<typeof candidatesSchema>;

export interface LayerTiming {
  origMs: number;
  replMs: number;
  /** origMs / replMs (medians of wall time) */
  speedup: number;
  /** the same ratio of median CPU times: steadier on a shared machine, reported beside it */
  cpuSpeedup: number | null;
  kind: string;
  ranks: number[];
  inputShape: number[];
  macs: { before: number | null; after: number | null };
  original: LatencyStats;
  replacement: LatencyStats;
}

export interface LatencyTable {
  version: number;
  threads: number;
  runs: number;
  warmup: number;
  graphOptimizationLevel: GraphOptimizationLevel;
  ortVersion: string;
  inputShape: number[];
  /** the whole original model at the same input shape: lets the engine add the untimed remainder */
  model: { origMs: number; stats: LatencyStats } | null;
  /** why the whole model was not timed, when it was not */
  modelNote: string | null;
  layers: Record<string, LayerTiming>;
}

export interface TimeCandidatesOptions {
  threads: number;
  runs: number;
  warmup: number;
  seed?: number;
  /** the original model: timed whole at candidates.json's input shape (single float input only) */
  modelPath?: string;
  graphOptimizationLevel?: GraphOptimizationLevel;
  /** checked between layers: a canceled job stops timing */
  signal?: AbortSignal;
}

async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${randomUUID()}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`);
  await rename(tmp, file);
}

export async function readCandidates(dir: string): Promise<Candidates> {
  const file = path.join(dir, CANDIDATES_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new Error(`cannot read ${file} (write it with python3 -m tuckerize candidates IN.onnx -o DIR): ${(err as Error).message}`);
  }
  const parsed = candidatesSchema.safeParse(raw);
  if (!parsed.success) throw new Error(`${file} is not a tuckerize candidates manifest: ${parsed.error.message}`);
  return parsed.data;
}

function randomTensor(dtype: 'float32' | 'float64', dims: number[], uniform: () => number): ort.Tensor {
  const values = fillNormal(new Float32Array(dims.reduce((a, b) => a * b, 1)), uniform);
  return dtype === 'float64' ? new ort.Tensor('float64', Float64Array.from(values), dims) : new ort.Tensor('float32', values, dims);
}

interface Timed {
  session: ort.InferenceSession;
  feeds: Record<string, ort.Tensor>;
  wallMs: number[];
  cpuMs: number[];
}

async function runOnce(t: Timed, record: boolean): Promise<void> {
  const cpuStart = process.cpuUsage();
  const start = process.hrtime.bigint();
  const out = await t.session.run(t.feeds);
  const wall = Number(process.hrtime.bigint() - start) / 1e6;
  const cpu = process.cpuUsage(cpuStart);
  for (const v of Object.values(out)) v.dispose();
  if (record) {
    t.wallMs.push(wall);
    t.cpuMs.push((cpu.user + cpu.system) / 1000);
  }
}

/**
 * Times every candidate pair in `dir`, and the whole model when given, in one interleaved loop: each round
 * runs the model once and every pair once (alternating which side goes first), so a change in machine load
 * hits the model and all layers alike and the untimed remainder (model − Σ originals) stays comparable.
 * Medians of `runs` rounds after `warmup`. All sessions are open at once: memory ≈ model + its layers twice.
 * Writes DIR/latency-table.json (atomically) and returns it.
 */
export async function timeCandidates(dir: string, options: TimeCandidatesOptions): Promise<LatencyTable> {
  if (!(options.runs >= MIN_TIMED_RUNS)) throw new RangeError(`runs must be at least ${MIN_TIMED_RUNS}, got ${options.runs}`);
  if (!(options.threads >= 1) || !(options.warmup >= 0)) {
    throw new RangeError(`threads must be ≥ 1 and warmup ≥ 0; got threads ${options.threads}, warmup ${options.warmup}`);
  }
  const candidates = await readCandidates(dir);
  const graphOptimizationLevel = options.graphOptimizationLevel ?? 'all';
  const sessOpts = sessionOptions({ threads: options.threads, graphOptimizationLevel, executionMode: 'sequential' });
  const uniform = seededUniform(options.seed ?? 0);
  const opened: ort.InferenceSession[] = [];
  const open = async (file: string, what: string) => {
    try {
      const session = await ort.InferenceSession.create(file, sessOpts);
      opened.push(session);
      return session;
    } catch (err) {
      throw new EngineCrashError(`onnxruntime could not load ${what} (${file}): ${(err as Error).message.split('\n')[0]}`);
    }
  };
  const timed = (session: ort.InferenceSession, feeds: Record<string, ort.Tensor>): Timed => ({ session, feeds, wallMs: [], cpuMs: [] });
  try {
    const pairs: Array<{ layer: Candidates['layers'][number]; a: Timed; b: Timed }> = [];
    for (const layer of candidates.layers) {
      const feeds = { [layer.inputName]: randomTensor(layer.dtype, layer.inputShape, uniform) };
      const a = await open(path.join(dir, layer.orig), `the original of layer ${layer.name}`);
      const b = await open(path.join(dir, layer.repl), `the replacement of layer ${layer.name}`);
      pairs.push({ layer, a: timed(a, feeds), b: timed(b, feeds) });
    }
    let whole: Timed | null = null;
    let modelNote: string | null = 'the whole model was not timed (no modelPath); the prediction covers the timed layers only';
    if (options.modelPath) {
      const session = await open(options.modelPath, 'the original model');
      const first = session.inputMetadata[0];
      if (session.inputMetadata.length === 1 && first?.isTensor && (first.type === 'float32' || first.type === 'float64')) {
        whole = timed(session, { [first.name]: randomTensor(first.type, candidates.inputShape, uniform) });
        modelNote = null;
      } else {
        modelNote = `the model has ${session.inputMetadata.length} inputs or a non-float input; only its layers were timed`;
      }
    }

    for (let round = 0; round < options.warmup + options.runs; round++) {
      options.signal?.throwIfAborted();
      const record = round >= options.warmup;
      if (whole) await runOnce(whole, record);
      for (const { a, b } of pairs) {
        const [first, second] = round % 2 === 0 ? [a, b] : [b, a];
        await runOnce(first, record);
        await runOnce(second, record);
      }
    }

    const layers: Record<string, LayerTiming> = {};
    for (const { layer, a, b } of pairs) {
      const original = latencyStats(a.wallMs, a.cpuMs);
      const replacement = latencyStats(b.wallMs, b.cpuMs);
      layers[layer.name] = {
        origMs: original.medianMs,
        replMs: replacement.medianMs,
        speedup: original.medianMs / replacement.medianMs,
        cpuSpeedup: ratioOf(original.cpuMedianMs, replacement.cpuMedianMs),
        kind: layer.kind,
        ranks: layer.ranks,
        inputShape: layer.inputShape,
        macs: layer.macs,
        original,
        replacement,
      };
    }
    const modelStats = whole ? latencyStats(whole.wallMs, whole.cpuMs) : null;
    const table: LatencyTable = {
      version: TABLE_VERSION,
      threads: options.threads,
      runs: options.runs,
      warmup: options.warmup,
      graphOptimizationLevel,
      ortVersion: ort.env.versions.node ?? ort.env.versions.common,
      inputShape: candidates.inputShape,
      model: modelStats ? { origMs: modelStats.medianMs, stats: modelStats } : null,
      modelNote,
      layers,
    };
    await writeJsonAtomic(path.join(dir, LATENCY_TABLE_FILE), table);
    return table;
  } finally {
    for (const session of opened) await session.release();
  }
}

// ---------------------------------------------------------------- the engine's side of the loop

export interface EngineCommandOptions {
  engine: EngineSettings;
  /** aborts the command (cancel, timeout): the engine's process group gets SIGTERM */
  signal?: AbortSignal;
}

/**
 * `python -m tuckerize ARGS…` through the worker's engine runner; its stdout. Exit 2 (bad input) becomes
 * BadInputError with the engine's error detail, anything else EngineCrashError, the same split as the job.
 */
export function tuckerize(args: string[], opts: EngineCommandOptions): Promise<string> {
  return runEngineCommand(opts.engine, { args, ...(opts.signal ? { signal: opts.signal } : {}) });
}

export interface LatencyPlanOptions extends EngineCommandOptions {
  modelPath: string;
  /** rounds go to DIR/round-N; result.json there lets a retried job reuse the measurements */
  workDir: string;
  /** compressed/original latency to reach, in (0, 1) */
  targetLatency: number;
  inputShape?: number[];
  roundTo?: number;
  force?: boolean;
  threads: number;
  runs: number;
  warmup: number;
  seed?: number;
  /** ≤ 3 by default: each round costs candidates + timing + one EVBMF pass */
  maxRounds?: number;
  /** stop when |predicted − target| ≤ tolerance · target */
  tolerance?: number;
  onRound?: (round: LatencyRound, maxRounds: number) => void;
}

export interface LatencyRound {
  round: number;
  targetMacs: number;
  dir: string;
  latencyTable: string;
  timedLayers: number;
  predictedRatio: number | null;
  basis: string | null;
  macsRatio: number | null;
  keptSlow: string[];
}

export interface LatencyPlanResult {
  targetLatency: number;
  /** the chosen round's: job options targetMacs and latencyTable */
  targetMacs: number;
  latencyTable: string;
  predictedRatio: number | null;
  converged: boolean;
  rounds: LatencyRound[];
  /** why iteration stopped early, when a later round's target was out of reach */
  note: string | null;
}

const plannedSchema = z.object({
  totals: z.object({
    macs: z.object({ ratio: z.number().nullable() }).passthrough(),
    latency: z.object({
      predictedRatio: z.number().nullable(),
      basis: z.string(),
      keptSlow: z.array(z.string()),
    }).passthrough(),
  }).passthrough(),
}).passthrough();

const clampFraction = (v: number) => Math.min(0.99, Math.max(0.01, v));

function ruleArgs(opts: LatencyPlanOptions): string[] {
  return [
    ...(opts.inputShape ? ['--input-shape', opts.inputShape.join(',')] : []),
    ...(opts.roundTo ? ['--round-to', String(opts.roundTo)] : []),
    ...(opts.force ? ['--force'] : []),
  ];
}

async function runRound(opts: LatencyPlanOptions, round: number, targetMacs: number): Promise<LatencyRound> {
  const dir = path.join(opts.workDir, `round-${round}`);
  await mkdir(dir, { recursive: true });
  const macs = String(targetMacs);
  await tuckerize(['candidates', opts.modelPath, '-o', dir, '--rule', 'budget', '--target-macs', macs, ...ruleArgs(opts)], opts);
  const table = await timeCandidates(dir, {
    threads: opts.threads, runs: opts.runs, warmup: opts.warmup, seed: opts.seed ?? 0, modelPath: opts.modelPath,
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  const latencyTable = path.join(dir, LATENCY_TABLE_FILE);
  const stdout = await tuckerize([
    'analyze', opts.modelPath, '--json', '--rule', 'latency', '--latency-table', latencyTable, '--target-macs', macs,
    '--target-latency', String(opts.targetLatency), ...ruleArgs(opts),
  ], opts);
  const parsed = plannedSchema.safeParse(JSON.parse(stdout));
  if (!parsed.success) throw new EngineCrashError(`tuckerize analyze --rule latency printed no latency totals: ${parsed.error.message}`);
  const { totals } = parsed.data;
  return {
    round, targetMacs, dir, latencyTable, timedLayers: Object.keys(table.layers).length,
    predictedRatio: totals.latency.predictedRatio, basis: totals.latency.basis, macsRatio: totals.macs.ratio,
    keptSlow: totals.latency.keptSlow,
  };
}

/**
 * A MACs target the engine can hit instead of `requested`, read from its refusal: ranks.solve_budget names
 * the two nearest achievable ratios when rank steps are too coarse for the 2 % band, and the reachable
 * range when the target lies outside it. The MACs target here is the worker's own derived figure, not the
 * client's, so moving it to what the model allows is the loop's business; null when the message is another.
 */
export function reachableMacsTarget(message: string, requested: number): number | null {
  const nearest = /nearest achievable ratios are ([\d.]+) and ([\d.]+)/.exec(message);
  if (nearest) {
    const options = [Number(nearest[1]), Number(nearest[2])].filter((v) => v > 0 && v < 1);
    if (options.length === 0) return null;
    return options.reduce((a, b) => (Math.abs(b - requested) < Math.abs(a - requested) ? b : a));
  }
  const range = /reachable range is \[([\d.]+), ([\d.]+)\]/.exec(message);
  if (range) {
    const [lo, hi] = [Number(range[1]), Number(range[2])];
    // 1 % inside the range: its ends are the all-rank-1 and full-rank extremes, hit only approximately.
    const inside = Math.min(hi * 0.99, Math.max(lo * 1.01, requested));
    return inside > 0 && inside < 1 && inside !== requested ? inside : null;
  }
  return null;
}

/** One round; when the engine refuses its MACs target as out of reach, once more at the nearest reachable one. */
async function runRoundReachable(opts: LatencyPlanOptions, round: number, targetMacs: number): Promise<LatencyRound> {
  try {
    return await runRound(opts, round, targetMacs);
  } catch (err) {
    const alternative = err instanceof BadInputError ? reachableMacsTarget(err.message, targetMacs) : null;
    if (alternative === null) throw err;
    return runRound(opts, round, alternative);
  }
}

/**
 * The targetLatency loop. Round 1 asks for targetMacs = targetLatency (time ∝ MACs would make that exact);
 * each next round scales targetMacs by targetLatency / predicted, the first-order correction when time
 * follows MACs with a constant overhead share. A round whose MACs target cannot be reached ends the loop
 * (the best earlier round stands); an unreachable first round is the client's input error.
 */
export async function planForLatency(opts: LatencyPlanOptions): Promise<LatencyPlanResult> {
  const target = opts.targetLatency;
  if (!(target > 0 && target < 1)) throw new BadInputError(`targetLatency must be in (0, 1), got ${target}`);
  const maxRounds = opts.maxRounds ?? 3;
  const tolerance = opts.tolerance ?? 0.05;
  await mkdir(opts.workDir, { recursive: true });
  const resultFile = path.join(opts.workDir, 'result.json');
  const key = createHash('sha256').update(JSON.stringify({
    model: opts.modelPath, target, inputShape: opts.inputShape ?? null, roundTo: opts.roundTo ?? null, force: opts.force ?? false,
    threads: opts.threads, runs: opts.runs, maxRounds, tolerance,
  })).digest('hex');
  try {
    const saved = JSON.parse(await readFile(resultFile, 'utf8')) as { key?: string; result?: LatencyPlanResult };
    if (saved.key === key && saved.result) return saved.result;
  } catch {
    // absent or half-written: measure again
  }

  const rounds: LatencyRound[] = [];
  let note: string | null = null;
  let targetMacs = clampFraction(target);
  for (let round = 1; round <= maxRounds; round++) {
    let current: LatencyRound;
    try {
      current = await runRoundReachable(opts, round, targetMacs);
    } catch (err) {
      if (round === 1 || !(err instanceof BadInputError)) throw err;
      note = `round ${round} (targetMacs ${targetMacs.toFixed(4)}) stopped: ${err.message}`;
      break;
    }
    rounds.push(current);
    targetMacs = current.targetMacs;
    opts.onRound?.(current, maxRounds);
    const predicted = current.predictedRatio;
    if (predicted === null || predicted <= 0 || Math.abs(predicted - target) <= tolerance * target) break;
    const next = clampFraction(targetMacs * (target / predicted));
    if (Math.abs(next - targetMacs) < 1e-4) break;
    targetMacs = next;
  }
  const distance = (r: LatencyRound) => (r.predictedRatio === null ? Infinity : Math.abs(r.predictedRatio - target));
  const best = rounds.reduce((a, b) => (distance(b) < distance(a) ? b : a));
  const result: LatencyPlanResult = {
    targetLatency: target,
    targetMacs: best.targetMacs,
    latencyTable: best.latencyTable,
    predictedRatio: best.predictedRatio,
    converged: distance(best) <= tolerance * target,
    rounds,
    note,
  };
  await writeJsonAtomic(resultFile, { key, result });
  return result;
}

/** The job.json options the engine's `run` needs for rule latency after planForLatency. */
export function latencyJobOptions(options: JobOptions, result: LatencyPlanResult): EngineJobOptions {
  return { ...options, rule: 'latency', targetMacs: result.targetMacs, latencyTable: result.latencyTable };
}
