// Verification and measurement of a compressed artifact with onnxruntime-node, the runtime our users
// deploy with: it must load, expose the same inputs and outputs as the original, produce finite
// outputs close to the original's, and we time both models interleaved in one process so drift in
// machine load hits both alike. Everything numeric here is measured, except energy (a stated estimate).
import os from 'node:os';
import * as ort from 'onnxruntime-node';
import { estimateEnergy, type EnergyEstimate } from './energy.js';
import { dataTypeName } from '../onnx/index.js';
import { FidelityAccumulator, VerificationError, type FidelityResult } from './fidelity.js';
import {
  fillNormal, MIN_TIMED_RUNS, latencyStats, ratioOf, seededUniform, sessionOptions, timeInterleaved,
  type ExecutionMode, type GraphOptimizationLevel, type LatencyStats, type SessionSettings,
} from './timing.js';
import { modelCost, observeTensorShapes, readOnnxModel, type ModelCost, type OnnxModelInfo, type TensorInfo } from './onnx-info.js';

export * from './timing.js';
export { VerificationError, type FidelityResult } from './fidelity.js';

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
    /** session.intra_op.allow_spinning: false unless asked for (timing.ts says why) */
    intraOpSpinning: boolean;
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

const compare = (before: number, after: number): Comparison => ({ before, after, ratio: after === 0 ? Infinity : before / after });

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

type Session = ort.InferenceSession;

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
        intraOpSpinning: settings.spinning === true,
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
