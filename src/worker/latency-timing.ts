// The latency rule's measurements: `python3 -m tuckerize candidates` writes one standalone model per side and
// layer plus candidates.json; timeCandidates() times them with ONNX Runtime and writes latency-table.json beside
// them, which the engine reads back (job option `latencyTable`). latency.ts runs the loop around it.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { z } from 'zod';
import { LATENCY_MIN_SPEEDUP, LATENCY_TABLE_FILE } from '../contract/engine.js';
import { EngineCrashError } from './engine.js';
import {
  fillNormal, latencyStats, MIN_TIMED_RUNS, ratioOf, seededUniform, sessionOptions, type GraphOptimizationLevel, type LatencyStats,
} from './verify.js';
import { writeJsonAtomic } from './stage-inputs.js';

export { LATENCY_MIN_SPEEDUP, LATENCY_TABLE_FILE };

export const CANDIDATES_FILE = 'candidates.json';
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
    relError: z.number().nullable().optional(),
    /** the layer's other structures at no more MACs (Tucker-1 on either mode), timed in the same loop */
    alternatives: z.array(z.object({
      kind: z.string(),
      ranks: z.array(z.number().int()),
      repl: fileName,
      macs: z.object({ after: z.number().nullable() }),
      relError: z.number().nullable().optional(),
    })).default([]),
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
  /** ‖W − Ŵ‖/‖W‖ of the timed replacement, as the engine reported it */
  relError: number | null;
  original: LatencyStats;
  replacement: LatencyStats;
  /** the other structures of the layer, timed in the same interleaved loop (the engine picks among them) */
  alternatives: AlternativeTiming[];
}

export interface AlternativeTiming {
  kind: string;
  ranks: number[];
  replMs: number;
  /** origMs / replMs */
  speedup: number;
  macs: { after: number | null };
  relError: number | null;
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
    const pairs: Array<{ layer: Candidates['layers'][number]; a: Timed; b: Timed; others: Timed[] }> = [];
    for (const layer of candidates.layers) {
      const feeds = { [layer.inputName]: randomTensor(layer.dtype, layer.inputShape, uniform) };
      const a = await open(path.join(dir, layer.orig), `the original of layer ${layer.name}`);
      const b = await open(path.join(dir, layer.repl), `the replacement of layer ${layer.name}`);
      const others: Timed[] = [];
      for (const alternative of layer.alternatives) {
        const session = await open(path.join(dir, alternative.repl), `the ${alternative.kind} structure of layer ${layer.name}`);
        others.push(timed(session, feeds));
      }
      pairs.push({ layer, a: timed(a, feeds), b: timed(b, feeds), others });
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
      for (const { a, b, others } of pairs) {
        // Every structure of a layer in one group, the order rotating from round to round.
        const group = [a, b, ...others];
        const shift = round % group.length;
        for (const t of [...group.slice(shift), ...group.slice(0, shift)]) await runOnce(t, record);
      }
    }

    const layers: Record<string, LayerTiming> = {};
    for (const { layer, a, b, others } of pairs) {
      const original = latencyStats(a.wallMs, a.cpuMs);
      const replacement = latencyStats(b.wallMs, b.cpuMs);
      const alternatives = layer.alternatives.map((alternative, index): AlternativeTiming => {
        const stats = latencyStats(others[index]!.wallMs, others[index]!.cpuMs);
        return {
          kind: alternative.kind, ranks: alternative.ranks, replMs: stats.medianMs, speedup: original.medianMs / stats.medianMs,
          macs: alternative.macs, relError: alternative.relError ?? null, replacement: stats,
        };
      });
      layers[layer.name] = {
        origMs: original.medianMs,
        replMs: replacement.medianMs,
        speedup: original.medianMs / replacement.medianMs,
        cpuSpeedup: ratioOf(original.cpuMedianMs, replacement.cpuMedianMs),
        kind: layer.kind,
        ranks: layer.ranks,
        inputShape: layer.inputShape,
        macs: layer.macs,
        relError: layer.relError ?? null,
        original,
        replacement,
        alternatives,
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
