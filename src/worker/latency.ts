// The latency rule's judge: ONNX Runtime times each layer the engine would rewrite, original node against
// replacement chain, at the layer's real input shape, and the engine keeps the layers whose replacement
// is not at least 5 % faster (engine/tuckerize/plan.py, rule 'latency').
//
// The split: `python3 -m tuckerize candidates` writes one standalone model per side and layer plus
// candidates.json; timeCandidates() (latency-timing.ts) times them and writes latency-table.json beside them; the engine
// reads that table back (job option `latencyTable`). For `targetLatency` (compressed/original latency),
// planForLatency() iterates: candidates at a MACs target → timing → the engine's predicted latency ratio
// (`analyze --rule latency --json`) → targetMacs scaled by targetLatency / predicted → again, at most
// maxRounds times; the round whose prediction lies closest to the target gives the job its options.
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type { EngineJobOptions, JobOptions } from '../contract/job-options.js';
import { reachableTargets, type EngineErrorEvent } from '../contract/engine-events.js';
import { BadInputError, EngineCrashError, runEngineCommand, type EngineSettings } from './engine.js';
import { LATENCY_TABLE_FILE, timeCandidates } from './latency-timing.js';
import { writeJsonAtomic } from './stage-inputs.js';

export * from './latency-timing.js';

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
  /** layers whose Tucker-1 structure the clock preferred to Tucker-2 (plan.choose_structures) */
  structures: string[];
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
      structures: z.array(z.string()).default([]),
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
    keptSlow: totals.latency.keptSlow, structures: totals.latency.structures,
  };
}

/**
 * A MACs target the engine can hit instead of `requested`, from the `data` of its `target_unreachable`
 * error event (ranks.solve_budget): the two nearest achievable ratios when the rank steps are too coarse for
 * the 2 % band, or the reachable range when the target lies outside it. The MACs target here is the worker's
 * own derived figure, not the client's, so moving it to what the model allows is the loop's business; null
 * for any other refusal.
 */
export function reachableMacsTarget(refusal: EngineErrorEvent | null, requested: number): number | null {
  const reachable = refusal ? reachableTargets(refusal) : null;
  if (reachable?.nearest) {
    const options = reachable.nearest.filter((v) => v > 0 && v < 1);
    if (options.length === 0) return null;
    return options.reduce((a, b) => (Math.abs(b - requested) < Math.abs(a - requested) ? b : a));
  }
  if (reachable?.range) {
    const [lo, hi] = reachable.range;
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
    const alternative = err instanceof BadInputError ? reachableMacsTarget(err.event, targetMacs) : null;
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
