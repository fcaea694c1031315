// Stage 4 of a job: onnxruntime-node verifies the artifact against the original and measures it (latency,
// weights, MACs, energy estimate): the Table-1 figures of the report.
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { UnrecoverableError } from 'bullmq';
import { z } from 'zod';
import type { JobOptions } from '../contract/job-options.js';
import type { JobContext, MeasureFn } from './job-context.js';
import { finiteNumber, isRecord } from './metrics.js';
import { ENGINE_SEED } from './stage-inputs.js';
import type { MeasurementReport } from './verify.js';

/** Batch timed besides batch 1 when the model's batch dimension is dynamic. */
const DYNAMIC_BATCH = 8;

/** The compressed model failed verification (does not load, or its inputs/outputs differ): an engine bug. */
export class ArtifactVerificationError extends UnrecoverableError {
  override readonly name = 'ArtifactVerificationError';
}

/** OnnxModel.inputs as the upload stored them (src/onnx/types.ts TensorInfo). */
const ModelInputsSchema = z.array(z.object({ dims: z.array(z.union([z.number(), z.string(), z.null()])) }).passthrough());

/** First dimension of the model's first input when it is a fixed number; DYNAMIC_BATCH otherwise. */
export function batchOf(inputs: unknown): number {
  const parsed = ModelInputsSchema.safeParse(inputs);
  const n = parsed.success ? parsed.data[0]?.dims[0] : undefined;
  return typeof n === 'number' && n > 0 ? n : DYNAMIC_BATCH;
}

/** onnxruntime-node is heavy to load: imported on the first job that gets this far, not at worker start. */
async function loadMeasure(): Promise<MeasureFn> {
  const { verifyAndMeasure } = await import('./verify.js');
  return verifyAndMeasure;
}

export async function measureArtifact(
  ctx: JobContext,
  artifact: { compressedPath: string; modelInputs: unknown; options: JobOptions; report: Record<string, unknown> },
): Promise<MeasurementReport | null> {
  const measure = ctx.deps.measure === undefined ? await loadMeasure() : ctx.deps.measure;
  if (!measure) {
    ctx.log.warn('verify/benchmark skipped: measurement disabled for this worker');
    await ctx.event('log', { level: 'warn', message: 'verification and benchmark skipped: disabled for this worker' });
    return null;
  }
  ctx.pushProgress({ stage: 'verify', done: 0, total: 1 });
  // The engine keeps the rewritten model from before fine-tuning under this name when it fine-tunes.
  const beforeFinetune = path.join(ctx.paths.outputDir, 'compressed-before-finetune.onnx');
  const hasBefore = await stat(beforeFinetune).then(
    () => true,
    () => false,
  );
  const { report, options } = artifact;
  const accuracy = isRecord(report.accuracy) && report.accuracy.labels === true ? report.accuracy : null;
  const top1Of = (section: unknown): number | null => (isRecord(section) ? finiteNumber(section.top1) ?? null : null);
  let measurement: MeasurementReport;
  try {
    measurement = await measure({
      originalPath: ctx.paths.modelPath,
      compressedPath: artifact.compressedPath,
      ...(hasBefore ? { compressedBeforeFinetunePath: beforeFinetune } : {}),
      threads: ctx.deps.config.ortThreads,
      batch: batchOf(artifact.modelInputs),
      runs: ctx.deps.measureRuns ?? 20,
      warmup: 3,
      seed: ENGINE_SEED,
      ...(options.inputShape ? { inputShape: options.inputShape } : {}),
      ...(accuracy
        ? { top1: { original: top1Of(accuracy.original), compressed: top1Of(accuracy.finetuned) ?? top1Of(accuracy.compressed) } }
        : {}),
    });
  } catch (err) {
    if (err instanceof Error && err.name === 'VerificationError') {
      throw new ArtifactVerificationError(`the compressed model failed verification with onnxruntime-node: ${err.message}`);
    }
    throw err;
  }
  ctx.pushProgress({ stage: 'verify', done: 1, total: 1 });
  return measurement;
}
