// Verification and measurement of a compressed artifact with onnxruntime-node, the runtime our users
// deploy with: it must load, expose the same inputs and outputs as the original, produce finite
// outputs close to the original's, and we time both models interleaved in one process so drift in
// machine load hits both alike. Everything numeric here is measured, except energy (a stated estimate).
import os from 'node:os';
import * as ort from 'onnxruntime-node';
import { estimateEnergy, type EnergyEstimate } from './energy.js';
import { dataTypeName } from '../onnx/index.js';
import { modelCost, observeTensorShapes, readOnnxModel, type ModelCost, type OnnxModelInfo, type TensorInfo } from './onnx-info.js';

export class VerificationError extends Error {
  override name = 'VerificationError';
}

export type GraphOptimizationLevel = 'disabled' | 'basic' | 'extended' | 'all';
export type ExecutionMode = 'sequential' | 'parallel';

export const MIN_TIMED_RUNS = 20;

export interface VerifyOptions {
  originalPath: string;
  /** the artifact to ship (fine-tuned when fine-tuning ran) */
  compressedPath: string;
  /** the rewritten model before fine-tuning; given when fine-tuning ran */
  compressedBeforeFinetunePath?: string;
  /** intra-op threads for every session (inter-op is always 1) */
  threads: number;
  /** the batch timed besides batch 1 (when the model's batch dimension is dynamic) */
  batch: number;
  /** timed runs per model and batch size; at least MIN_TIMED_RUNS */
  runs: number;
  warmup: number;
  seed: number;
  /** random inputs compared for fidelity (default 16) */
  samples?: number;
  graphOptimizationLevel?: GraphOptimizationLevel;
  executionMode?: ExecutionMode;
  /** [N, C, H, W] used where the model declares a dynamic non-batch dimension */
  inputShape?: number[];
  /** fail when the model before fine-tuning differs from the original by more than this (‖a−b‖/‖a‖) */
  maxRelativeError?: number;
  /** fail when the fine-tuned model agrees with the original's top-1 on fewer inputs than this */
  minTop1Agreement?: number;
  /** top-1 accuracies measured by the engine on the user's labelled data, when it had labels */
  top1?: { original: number | null; compressed: number | null };
}

export interface IoSignature {
  name: string;
  type: string;
  shape: Array<number | string>;
}

export interface FidelityResult {
  /** ‖a−b‖₂ / ‖a‖₂ per output over all samples, a = original */
  relativeError: Record<string, number>;
  maxRelativeError: number;
  /** share of samples where the argmax of the first [N, classes] output agrees; null without such an output */
  top1Agreement: number | null;
}

export interface LatencyStats {
  runs: number;
  medianMs: number;
  p90Ms: number;
  meanMs: number;
  minMs: number;
  /**
   * Median CPU time of this process per run (all its threads; spinning pool threads included).
   * Unlike wall time it does not grow while other processes hold the cores, so on a shared
   * machine its ratio is the steadier estimate of how much less work a model needs.
   */
  cpuMedianMs: number | null;
}

export interface LatencyResult {
  batch: number;
  warmup: number;
  original: LatencyStats;
  compressed: LatencyStats;
  /** original median / compressed median (wall clock) */
  speedup: number;
  /** the same ratio of median CPU times */
  cpuSpeedup: number | null;
}

export interface Comparison {
  before: number;
  after: number;
  /** before / after: how many times smaller, faster or cheaper */
  ratio: number;
}

export interface MeasurementReport {
  runtime: {
    name: 'onnxruntime-node';
    version: string;
    executionProvider: 'cpu';
    intraOpNumThreads: number;
    interOpNumThreads: 1;
    graphOptimizationLevel: GraphOptimizationLevel;
    executionMode: ExecutionMode;
    cpu: string;
  };
  io: { inputs: IoSignature[]; outputs: IoSignature[] };
  fidelity: {
    samples: number;
    seed: number;
    /** what decides pass/fail: relative error before fine-tuning, top-1 agreement after */
    criterion: 'relative-error' | 'top1-agreement';
    compressed: FidelityResult;
    beforeFinetune: FidelityResult | null;
  };
  latency: LatencyResult[];
  cost: { batch: number; original: ModelCost; compressed: ModelCost };
  energy: { original: EnergyEstimate; compressed: EnergyEstimate };
  /** The paper's Table 1, per inference at cost.batch; latency at batch 1 */
  table1: {
    weights: Comparison;
    macs: Comparison;
    /** accuracies from the engine (labelled data); change = after − before */
    top1: { before: number | null; after: number | null; change: number | null } | null;
    latencyMs: Comparison;
    energyMillijoulesEstimate: Comparison;
  };
  notes: string[];
}

// ---------------------------------------------------------------- helpers

/** mulberry32: small, fast, and reproducible across platforms for a given seed */
export function seededUniform(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal samples (Box–Muller): inputs look like normalised images, not [0, 1) noise. */
export function fillNormal(data: Float32Array, uniform: () => number): Float32Array {
  for (let i = 0; i < data.length; i += 2) {
    const u1 = 1 - uniform(); // (0, 1]: log stays finite
    const u2 = uniform();
    const radius = Math.sqrt(-2 * Math.log(u1));
    data[i] = radius * Math.cos(2 * Math.PI * u2);
    if (i + 1 < data.length) data[i + 1] = radius * Math.sin(2 * Math.PI * u2);
  }
  return data;
}

export function median(sorted: readonly number[]): number {
  const n = sorted.length;
  if (n === 0) throw new RangeError('median of no samples');
  const mid = n >> 1;
  return n % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** nearest-rank percentile of ascending samples */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) throw new RangeError('percentile of no samples');
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1]!;
}

export function latencyStats(wallMs: readonly number[], cpuMs?: readonly number[]): LatencyStats {
  const sorted = [...wallMs].sort((a, b) => a - b);
  return {
    runs: sorted.length,
    medianMs: median(sorted),
    p90Ms: percentile(sorted, 90),
    meanMs: sorted.reduce((s, v) => s + v, 0) / sorted.length,
    minMs: sorted[0]!,
    cpuMedianMs: cpuMs && cpuMs.length > 0 ? median([...cpuMs].sort((a, b) => a - b)) : null,
  };
}

export const ratioOf = (a: number | null, b: number | null): number | null => (a !== null && b !== null && b > 0 ? a / b : null);

const compare = (before: number, after: number): Comparison => ({ before, after, ratio: after === 0 ? Infinity : before / after });

export interface SessionSettings {
  threads: number;
  graphOptimizationLevel: GraphOptimizationLevel;
  executionMode: ExecutionMode;
}

export function sessionOptions(settings: SessionSettings): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: ['cpu'],
    intraOpNumThreads: settings.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: settings.graphOptimizationLevel,
    executionMode: settings.executionMode,
    logSeverityLevel: 3,
  };
}

async function loadChecked(path: string, role: string, options: ort.InferenceSession.SessionOptions) {
  let info: OnnxModelInfo;
  try {
    info = await readOnnxModel(path);
  } catch (err) {
    throw new VerificationError(`the ${role} model ${path} is not a readable ONNX file: ${(err as Error).message}`);
  }
  try {
    const session = await ort.InferenceSession.create(path, options);
    return { info, session };
  } catch (err) {
    throw new VerificationError(
      `onnxruntime could not load the ${role} model ${path}: ${(err as Error).message.split('\n')[0]}`,
    );
  }
}

/** The interface as the file declares it: what other runtimes and code generators will read. */
function declaredSignature(values: TensorInfo[]): IoSignature[] {
  return values.map((v) => ({ name: v.name, type: dataTypeName(v.elemType), shape: v.dims.map((d) => d ?? '?') }));
}

function signature(meta: readonly ort.InferenceSession.ValueMetadata[]): IoSignature[] {
  return meta.map((m) => (m.isTensor
    ? { name: m.name, type: m.type, shape: [...m.shape] }
    : { name: m.name, type: 'non-tensor', shape: [] }));
}

/** Names, element types and ranks must agree; a dimension may differ only where one side is dynamic or undeclared. */
export function compareSignatures(kind: 'input' | 'output', original: IoSignature[], other: IoSignature[], role: string): void {
  const problems: string[] = [];
  const names = (s: IoSignature[]) => s.map((v) => v.name).join(', ');
  if (names(original) !== names(other)) {
    problems.push(`${kind} names differ: original [${names(original)}], ${role} [${names(other)}]`);
  } else {
    original.forEach((a, i) => {
      const b = other[i]!;
      // A side that declares nothing (no element type, no shape) constrains nothing: the runtime's
      // actual outputs are compared element-wise later anyway.
      if (a.type !== b.type && a.type !== 'undeclared' && b.type !== 'undeclared') problems.push(`${kind} '${a.name}' has type ${a.type} in the original, ${b.type} in the ${role}`);
      const static_ = (d: number | string) => typeof d === 'number' && d > 0;
      const shapesAgree = a.shape.length === 0 || b.shape.length === 0 || a.shape.length === b.shape.length
        && a.shape.every((d, j) => !static_(d) || !static_(b.shape[j]!) || d === b.shape[j]);
      if (!shapesAgree) {
        problems.push(`${kind} '${a.name}' has shape [${a.shape.join(', ')}] in the original, [${b.shape.join(', ')}] in the ${role}`);
      }
    });
  }
  if (problems.length > 0) {
    throw new VerificationError(`the ${role} model does not match the original's interface: ${problems.join('; ')}`);
  }
}

/** The concrete input shape at a batch size; null batch keeps a static batch dimension as declared. */
export function resolveInputShape(input: IoSignature, batch: number, override?: number[]): number[] {
  if (input.shape.length === 0) {
    if (!override || override.length === 0) {
      throw new VerificationError(`input '${input.name}' declares no shape; pass inputShape [N, C, H, W] to say what size to test`);
    }
    return override.map((d, i) => (i === 0 ? batch : d));
  }
  return input.shape.map((d, i) => {
    const isStatic = typeof d === 'number' && d > 0;
    if (i === 0) return isStatic ? (d as number) : batch;
    if (isStatic) {
      if (override && override[i] !== undefined && override[i] !== d) {
        throw new VerificationError(
          `inputShape ${JSON.stringify(override)} disagrees with input '${input.name}' dimension ${i} = ${d} declared by the model`,
        );
      }
      return d as number;
    }
    const given = override?.[i];
    if (given === undefined || !(given > 0)) {
      throw new VerificationError(
        `input '${input.name}' dimension ${i} is dynamic (${String(d)}); pass inputShape [N, C, H, W] to say what size to test`,
      );
    }
    return given;
  });
}

function randomFeeds(inputs: IoSignature[], batch: number, uniform: () => number, override?: number[]): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const input of inputs) {
    if (input.type !== 'float32') {
      throw new VerificationError(`input '${input.name}' has type ${input.type}; verification feeds float32 inputs only`);
    }
    const dims = resolveInputShape(input, batch, override);
    const data = fillNormal(new Float32Array(dims.reduce((a, b) => a * b, 1)), uniform);
    feeds[input.name] = new ort.Tensor('float32', data, dims);
  }
  return feeds;
}

class FidelityAccumulator {
  private diff2 = new Map<string, number>();
  private ref2 = new Map<string, number>();
  private agree = 0;
  private compared = 0;
  private classifierOutput: string | null | undefined = undefined;

  constructor(private readonly role: string) {}

  add(original: ort.InferenceSession.OnnxValueMapType, other: ort.InferenceSession.OnnxValueMapType): void {
    for (const [name, ref] of Object.entries(original)) {
      const cand = other[name];
      if (!cand) throw new VerificationError(`the ${this.role} model produced no output '${name}'`);
      if (ref.dims.join('x') !== cand.dims.join('x')) {
        throw new VerificationError(
          `output '${name}' has shape [${ref.dims.join(', ')}] from the original but [${cand.dims.join(', ')}] from the ${this.role} model`,
        );
      }
      const a = ref.data as Float32Array;
      const b = cand.data as Float32Array;
      let d2 = 0;
      let r2 = 0;
      for (let i = 0; i < a.length; i++) {
        const av = a[i]!;
        const bv = b[i]!;
        if (!Number.isFinite(bv)) {
          throw new VerificationError(`output '${name}' of the ${this.role} model contains ${bv} at element ${i}: the artifact is broken`);
        }
        if (!Number.isFinite(av)) {
          throw new VerificationError(`output '${name}' of the original model contains ${av} at element ${i}: cannot compare against it`);
        }
        d2 += (av - bv) ** 2;
        r2 += av ** 2;
      }
      this.diff2.set(name, (this.diff2.get(name) ?? 0) + d2);
      this.ref2.set(name, (this.ref2.get(name) ?? 0) + r2);
    }
    if (this.classifierOutput === undefined) {
      const first = Object.entries(original).find(([, v]) => v.dims.length === 2 && Number(v.dims[1]) > 1);
      this.classifierOutput = first ? first[0] : null;
    }
    if (this.classifierOutput !== null) {
      const ref = original[this.classifierOutput]!;
      const cand = other[this.classifierOutput]!;
      const [rows, cols] = ref.dims.map(Number) as [number, number];
      const argmax = (data: Float32Array, row: number) => {
        let best = 0;
        for (let c = 1; c < cols; c++) if (data[row * cols + c]! > data[row * cols + best]!) best = c;
        return best;
      };
      for (let r = 0; r < rows; r++) {
        if (argmax(ref.data as Float32Array, r) === argmax(cand.data as Float32Array, r)) this.agree++;
        this.compared++;
      }
    }
  }

  result(): FidelityResult {
    const relativeError: Record<string, number> = {};
    for (const [name, d2] of this.diff2) {
      const r2 = this.ref2.get(name)!;
      relativeError[name] = r2 === 0 ? (d2 === 0 ? 0 : Infinity) : Math.sqrt(d2 / r2);
    }
    return {
      relativeError,
      maxRelativeError: Math.max(0, ...Object.values(relativeError)),
      top1Agreement: this.compared > 0 ? this.agree / this.compared : null,
    };
  }
}

type Session = ort.InferenceSession;

export interface TimingSamples {
  wallMs: number[];
  cpuMs: number[];
}

/**
 * Times two sessions on the same feeds, alternating which goes first each round so that neither
 * systematically benefits from a warmer cache or a quieter moment.
 */
export async function timeInterleaved(
  a: Session, b: Session, feeds: Record<string, ort.Tensor>, runs: number, warmup: number,
): Promise<{ a: TimingSamples; b: TimingSamples }> {
  const once = async (s: Session, into?: TimingSamples): Promise<void> => {
    const cpuStart = process.cpuUsage();
    const start = process.hrtime.bigint();
    const out = await s.run(feeds);
    const wall = Number(process.hrtime.bigint() - start) / 1e6;
    const cpu = process.cpuUsage(cpuStart);
    for (const v of Object.values(out)) v.dispose();
    into?.wallMs.push(wall);
    into?.cpuMs.push((cpu.user + cpu.system) / 1000);
  };
  for (let i = 0; i < warmup; i++) {
    await once(a);
    await once(b);
  }
  const samples = { a: { wallMs: [], cpuMs: [] } as TimingSamples, b: { wallMs: [], cpuMs: [] } as TimingSamples };
  for (let i = 0; i < runs; i++) {
    if (i % 2 === 0) {
      await once(a, samples.a);
      await once(b, samples.b);
    } else {
      await once(b, samples.b);
      await once(a, samples.a);
    }
  }
  return samples;
}

// ---------------------------------------------------------------- the entry point

export async function verifyAndMeasure(options: VerifyOptions): Promise<MeasurementReport> {
  if (!(options.runs >= MIN_TIMED_RUNS)) throw new RangeError(`runs must be at least ${MIN_TIMED_RUNS}, got ${options.runs}`);
  if (!(options.threads >= 1) || !(options.batch >= 1) || !(options.warmup >= 0)) {
    throw new RangeError(`threads and batch must be ≥ 1 and warmup ≥ 0; got ${JSON.stringify(options)}`);
  }
  const settings: SessionSettings = {
    threads: options.threads,
    graphOptimizationLevel: options.graphOptimizationLevel ?? 'all',
    executionMode: options.executionMode ?? 'sequential',
  };
  const sessOpts = sessionOptions(settings);
  const notes: string[] = [];
  const original = await loadChecked(options.originalPath, 'original', sessOpts);
  const opened: Session[] = [original.session];
  try {
    const compressed = await loadChecked(options.compressedPath, 'compressed', sessOpts);
    opened.push(compressed.session);
    const beforeFt = options.compressedBeforeFinetunePath
      ? await loadChecked(options.compressedBeforeFinetunePath, 'pre-fine-tuning', sessOpts)
      : null;
    if (beforeFt) opened.push(beforeFt.session);

    const inputs = signature(original.session.inputMetadata);
    const outputs = signature(original.session.outputMetadata);
    // onnxruntime reports shapes merged with its own inference, so a wrong declaration in the file can
    // hide behind correct metadata: compare the declarations too.
    for (const candidate of [compressed, beforeFt]) {
      if (!candidate) continue;
      const role = candidate === compressed ? 'compressed' : 'pre-fine-tuning';
      compareSignatures('input', inputs, signature(candidate.session.inputMetadata), role);
      compareSignatures('output', outputs, signature(candidate.session.outputMetadata), role);
      compareSignatures('input', declaredSignature(original.info.inputs), declaredSignature(candidate.info.inputs), role);
      compareSignatures('output', declaredSignature(original.info.outputs), declaredSignature(candidate.info.outputs), role);
    }
    const batchIsDynamic = inputs.every((i) => !(typeof i.shape[0] === 'number' && i.shape[0] > 0));
    if (!batchIsDynamic) notes.push(`the batch dimension is static; only the declared batch was timed`);

    // Fidelity on fresh inputs, in chunks of the timed batch size.
    const samples = options.samples ?? 16;
    const uniform = seededUniform(options.seed);
    const compressedFidelity = new FidelityAccumulator('compressed');
    const beforeFtFidelity = beforeFt ? new FidelityAccumulator('pre-fine-tuning') : null;
    let seen = 0;
    while (seen < samples) {
      const feeds = randomFeeds(inputs, Math.min(options.batch, samples - seen), uniform, options.inputShape);
      const ref = await original.session.run(feeds);
      compressedFidelity.add(ref, await compressed.session.run(feeds));
      if (beforeFt && beforeFtFidelity) beforeFtFidelity.add(ref, await beforeFt.session.run(feeds));
      seen += Number(Object.values(feeds)[0]!.dims[0]);
    }
    const fidelity = {
      samples: seen,
      seed: options.seed,
      criterion: beforeFt ? 'top1-agreement' as const : 'relative-error' as const,
      compressed: compressedFidelity.result(),
      beforeFinetune: beforeFtFidelity?.result() ?? null,
    };
    const unfinetuned = fidelity.beforeFinetune ?? (beforeFt ? null : fidelity.compressed);
    if (options.maxRelativeError !== undefined && unfinetuned && unfinetuned.maxRelativeError > options.maxRelativeError) {
      throw new VerificationError(
        `relative output error ${unfinetuned.maxRelativeError.toPrecision(4)} exceeds the allowed ${options.maxRelativeError}: `
        + `the rewritten model does not reproduce the original (${JSON.stringify(unfinetuned.relativeError)})`,
      );
    }
    if (beforeFt && options.minTop1Agreement !== undefined) {
      const agreement = fidelity.compressed.top1Agreement;
      if (agreement === null) {
        notes.push('no [N, classes] output: top-1 agreement could not be checked');
      } else if (agreement < options.minTop1Agreement) {
        throw new VerificationError(
          `the fine-tuned model agrees with the original's top-1 on ${(agreement * 100).toFixed(1)} % of ${seen} inputs, `
          + `below the required ${(options.minTop1Agreement * 100).toFixed(1)} %`,
        );
      }
    }

    // Latency, interleaved, at batch 1 and the configured batch.
    const batches = batchIsDynamic ? [...new Set([1, options.batch])] : [Number(inputs[0]!.shape[0])];
    const latency: LatencyResult[] = [];
    for (const batch of batches) {
      const feeds = randomFeeds(inputs, batch, uniform, options.inputShape);
      const t = await timeInterleaved(original.session, compressed.session, feeds, options.runs, options.warmup);
      const o = latencyStats(t.a.wallMs, t.a.cpuMs);
      const c = latencyStats(t.b.wallMs, t.b.cpuMs);
      latency.push({
        batch, warmup: options.warmup, original: o, compressed: c,
        speedup: o.medianMs / c.medianMs, cpuSpeedup: ratioOf(o.cpuMedianMs, c.cpuMedianMs),
      });
    }

    // Params, MACs and traffic from the shapes the runtime produces at the smallest batch.
    const costBatch = batches[0]!;
    const costFeeds = randomFeeds(inputs, costBatch, uniform, options.inputShape);
    const originalCost = modelCost(original.info, await observeTensorShapes(original.info, costFeeds, sessOpts));
    const compressedCost = modelCost(compressed.info, await observeTensorShapes(compressed.info, costFeeds, sessOpts));
    const energy = { original: estimateEnergy(originalCost), compressed: estimateEnergy(compressedCost) };
    const batch1 = latency[0]!;

    return {
      runtime: {
        name: 'onnxruntime-node',
        version: ort.env.versions.node ?? ort.env.versions.common,
        executionProvider: 'cpu',
        intraOpNumThreads: settings.threads,
        interOpNumThreads: 1,
        graphOptimizationLevel: settings.graphOptimizationLevel,
        executionMode: settings.executionMode,
        cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
      },
      io: { inputs, outputs },
      fidelity,
      latency,
      cost: { batch: costBatch, original: originalCost, compressed: compressedCost },
      energy,
      table1: {
        weights: compare(originalCost.params, compressedCost.params),
        macs: compare(originalCost.macs, compressedCost.macs),
        top1: options.top1
          ? {
            before: options.top1.original,
            after: options.top1.compressed,
            change: options.top1.original !== null && options.top1.compressed !== null
              ? options.top1.compressed - options.top1.original
              : null,
          }
          : null,
        latencyMs: compare(batch1.original.medianMs, batch1.compressed.medianMs),
        energyMillijoulesEstimate: compare(energy.original.millijoules, energy.compressed.millijoules),
      },
      notes,
    };
  } finally {
    for (const s of opened) await s.release();
  }
}
