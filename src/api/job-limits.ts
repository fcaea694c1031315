// What a job will cost, estimated before it is queued, and the limits it is checked against (issue 12):
// - per job (422): memory (dataset tensors + weights + activations at the batch size) and compute seconds
//   (optimizer steps x samples x MACs at the measured engine throughput), JOB_MAX_MEMORY_MB / JOB_MAX_COMPUTE_SECONDS;
// - per tenant (429 + Retry-After): queued + running jobs (TENANT_MAX_ACTIVE_JOBS) and the estimated compute
//   seconds of the jobs created in the last hour (TENANT_MAX_COMPUTE_SECONDS_PER_HOUR).
// The constants below were measured with benchmarks/job_cost.py on the reference networks (docs/security.md).
// The estimate bounds what a tenant can ask for; the engine's OS memory limit catches what it misses.
import type { Config } from '../config.js';
import type { PrismaClient } from '../db/client.js';
import { ApiError, UnprocessableError } from './errors.js';

const MB = 1024 * 1024;
const FLOAT32 = 4;

/**
 * Peak training memory per sample as a multiple of the sample's input bytes (student activations kept for
 * the backward pass, their gradients, the teacher's forward): the largest of the reference networks over two
 * runs of benchmarks/job_cost.py (fmnist-vgg 670 and 1,125; fmnist-resnet 490 and 1,054; peak-RSS growth is noisy).
 */
export const ACTIVATION_PER_INPUT_BYTE = 1125;
/** The same for an evaluation pass without gradients (fmnist-vgg 136, fmnist-resnet 210). */
export const EVAL_ACTIVATION_PER_INPUT_BYTE = 210;
/** Weights held in training: teacher, student, gradients, optimizer state, the interpreter's copies. */
const WEIGHT_COPIES = 6;
/** Per optimizer step the samples cost ~4 forward passes: student forward + backward (~2x), teacher forward. */
const PASSES_PER_TRAINING_SAMPLE = 4;
/**
 * Without the engine's analysis (params/MACs not known yet), MACs per sample are bounded by
 * params x H x W x this ratio: its largest value on the reference networks (fmnist-resnet, 0.148).
 */
const MACS_PER_PARAM_PIXEL = 0.15;
/** The engine's evaluation batch (finetune.predict) and its default held-out size and batch size. */
const EVAL_BATCH = 256;
const DEFAULT_EVAL_SAMPLES = 2000;
const DEFAULT_BATCH_SIZE = 64;
/**
 * Accuracy-target mode (options.maxAccuracyDrop, engine/tuckerize/search.py): up to this many candidates,
 * each briefly fine-tuned for at most this many steps (one epoch at most) and scored on the held-out split.
 */
const SEARCH_CANDIDATES = 5;
const SEARCH_CANDIDATE_STEPS = 200;
/** A .zip dataset is decoded in batches; decoded images are cached up to this (engine/tuckerize/data.py). */
export const ZIP_DECODE_CACHE_BYTES = 256 * MB;
/** The built-in Fashion-MNIST: train and test splits held as float32. */
const BUILTIN_TRAIN = 60_000;
const BUILTIN_TEST = 10_000;
/** Upper bounds on one sample and a batch, whatever the limits: past them the figures mean nothing. */
export const MAX_SAMPLE_ELEMENTS = 16 * 1024 * 1024;
export const MAX_BATCH_SIZE = 1024;

export interface JobLimits {
  maxMemoryMb: number;
  maxComputeSeconds: number;
  /** the engine's measured training throughput */
  macsPerSecond: number;
}

interface FinetuneOptions {
  epochs?: number;
  steps?: number;
  batchSize?: number;
  maxSamples?: number;
  evalSamples?: number;
}

export interface EstimateInput {
  /** the OnnxModel row: `inputs` is its JSON list of {dims} */
  model: { inputs: unknown; params: bigint | number | null; macs: bigint | number | null; bytes: bigint | number };
  /** null: no dataset; 'builtin' for the built-in Fashion-MNIST */
  dataset: { format: string; info: unknown } | 'builtin' | null;
  options: { inputShape?: number[]; finetune?: FinetuneOptions; maxAccuracyDrop?: number };
}

export interface JobEstimate {
  memoryMb: number;
  computeSeconds: number;
  /** what the memory figure is made of, in bytes */
  datasetBytes: number;
  weightBytes: number;
  activationBytes: number;
  /** [C, H, W] of one sample */
  sample: number[];
  macsPerSample: number;
  steps: number;
  batchSize: number;
}

function firstInputDims(inputs: unknown): unknown[] {
  const first = Array.isArray(inputs) ? (inputs[0] as { dims?: unknown } | undefined) : undefined;
  return Array.isArray(first?.dims) ? first.dims : [];
}

const staticDim = (d: unknown): number | undefined => (typeof d === 'number' && Number.isInteger(d) && d > 0 ? d : undefined);

function datasetSummary(dataset: EstimateInput['dataset']): { samples: number; sample?: number[] } {
  if (dataset === null) return { samples: 0 };
  if (dataset === 'builtin') return { samples: BUILTIN_TRAIN + BUILTIN_TEST, sample: [1, 28, 28] };
  const info = (dataset.info ?? {}) as { count?: unknown; total?: unknown; shape?: unknown };
  if (dataset.format === 'npz') {
    const shape = Array.isArray(info.shape) ? info.shape.map(Number) : [];
    return { samples: Number(info.count) || 0, ...(shape.length === 4 ? { sample: shape.slice(1) } : {}) };
  }
  return { samples: Number(info.total) || 0 };
}

/** [C, H, W] of one sample: options.inputShape, else the model's static dims, else the dataset's. */
function sampleShape(input: EstimateInput, fromDataset: number[] | undefined): number[] {
  if (input.options.inputShape) return input.options.inputShape.slice(1);
  const dims = firstInputDims(input.model.inputs);
  const declared = dims.slice(1).map(staticDim);
  if (declared.length === 3 && declared.every((d) => d !== undefined)) return declared as number[];
  if (fromDataset) return fromDataset;
  // Dynamic dims and no data to say otherwise: the engine then uses 1 for each unknown dimension.
  return declared.length === 3 ? declared.map((d) => d ?? 1) : [1, 1, 1];
}

function macsPerSample(input: EstimateInput, sample: number[]): number {
  const [, h = 1, w = 1] = sample;
  const params = Number(input.model.params ?? 0) || Number(input.model.bytes) / FLOAT32;
  if (input.model.macs !== null && input.model.macs !== undefined) {
    // The analysis ran at the model's declared input size; convolutions scale with the pixels.
    const dims = firstInputDims(input.model.inputs);
    const h0 = staticDim(dims[2]);
    const w0 = staticDim(dims[3]);
    const scale = h0 && w0 ? (h * w) / (h0 * w0) : 1;
    return Number(input.model.macs) * scale;
  }
  return params * h * w * MACS_PER_PARAM_PIXEL;
}

export function estimateJob(input: EstimateInput, macsPerSecond: number): JobEstimate {
  const data = datasetSummary(input.dataset);
  const sample = sampleShape(input, data.sample);
  const sampleElements = sample.reduce((a, b) => a * b, 1);
  if (sampleElements > MAX_SAMPLE_ELEMENTS) {
    throw new UnprocessableError(
      `one input sample of shape ${JSON.stringify(sample)} has ${sampleElements.toLocaleString('en')} elements; the limit is ` +
        `${MAX_SAMPLE_ELEMENTS.toLocaleString('en')} (C x H x W); give a smaller options.inputShape`,
    );
  }
  const sampleBytes = sampleElements * FLOAT32;
  const macs = macsPerSample(input, sample);
  const params = Number(input.model.params ?? 0) || Number(input.model.bytes) / FLOAT32;
  const finetune = input.options.finetune;

  // Samples the engine holds: the built-in set entirely; an .npz as float32, its train/held-out copies
  // included; a .zip decoded in batches with a bounded cache.
  let datasetBytes = 0;
  if (input.dataset === 'builtin' || input.dataset?.format === 'npz') datasetBytes = 2 * data.samples * sampleBytes;
  else if (input.dataset !== null) datasetBytes = Math.min(ZIP_DECODE_CACHE_BYTES, data.samples * sampleBytes);

  const isBuiltin = input.dataset === 'builtin';
  const trainSamples = Math.min(
    isBuiltin ? BUILTIN_TRAIN : Math.floor(data.samples * 0.9),
    finetune?.maxSamples ?? Number.POSITIVE_INFINITY,
  );
  const heldOut = input.dataset === null ? 0 : isBuiltin ? BUILTIN_TEST : Math.max(1, Math.round(data.samples * 0.1));
  const evalSamples = Math.min(finetune?.evalSamples ?? DEFAULT_EVAL_SAMPLES, heldOut);

  // The batch and steps per epoch of the job's fine-tuning, and of its accuracy search's brief ones.
  const batch = Math.max(1, Math.min(finetune?.batchSize ?? DEFAULT_BATCH_SIZE, trainSamples));
  const perEpoch = Math.max(1, Math.floor(trainSamples / batch));
  let steps = 0;
  let batchSize = 0;
  let epochs = 0;
  if (finetune) {
    batchSize = batch;
    if (batchSize > MAX_BATCH_SIZE) {
      throw new UnprocessableError(`finetune.batchSize ${batchSize} exceeds ${MAX_BATCH_SIZE}; use a smaller batch`);
    }
    if (finetune.epochs !== undefined) steps = Math.min(finetune.epochs * perEpoch, finetune.steps ?? Number.POSITIVE_INFINITY);
    else steps = finetune.steps ?? perEpoch;
    epochs = Math.ceil(steps / perEpoch);
  }

  // Training and evaluation take turns: the larger of the two peaks. Without a dataset the engine only
  // traces the model with one sample.
  const evalBatch = input.dataset === null ? 1 : Math.min(EVAL_BATCH, Math.max(evalSamples, 1));
  const activationBytes = sampleBytes * Math.max(ACTIVATION_PER_INPUT_BYTE * batchSize, EVAL_ACTIVATION_PER_INPUT_BYTE * evalBatch);
  const weightBytes = Math.max(params * FLOAT32, Number(input.model.bytes)) * WEIGHT_COPIES;
  // Evaluations: original and compressed before training, the student after each epoch and at the end.
  const evalPasses = input.dataset === null ? 0 : 2 + (finetune ? epochs + 1 : 0);
  // Accuracy-target mode: each candidate's brief fine-tune and its held-out check come before the job's own.
  let searchPasses = 0;
  if (input.options.maxAccuracyDrop !== undefined && input.dataset !== null) {
    // Per candidate the fine-tuning stage scores the original, the candidate and the tuned candidate.
    const searchSteps = Math.min(SEARCH_CANDIDATE_STEPS, perEpoch);
    searchPasses = SEARCH_CANDIDATES * (PASSES_PER_TRAINING_SAMPLE * searchSteps * batch + 3 * evalSamples);
  }
  const passes = PASSES_PER_TRAINING_SAMPLE * steps * batchSize + evalPasses * evalSamples + searchPasses;
  return {
    memoryMb: Math.ceil((datasetBytes + weightBytes + activationBytes) / MB),
    computeSeconds: Math.ceil((passes * macs) / macsPerSecond),
    datasetBytes,
    weightBytes,
    activationBytes,
    sample,
    macsPerSample: Math.round(macs),
    steps,
    batchSize,
  };
}

const mb = (bytes: number) => `${Math.ceil(bytes / MB).toLocaleString('en')} MB`;

/** 422 naming the limit and the estimate when a job would exceed a per-job limit. */
export function checkJobLimits(estimate: JobEstimate, limits: JobLimits): void {
  if (estimate.memoryMb > limits.maxMemoryMb) {
    throw new UnprocessableError(
      `the job needs an estimated ${estimate.memoryMb.toLocaleString('en')} MB of memory (dataset ${mb(estimate.datasetBytes)}, ` +
        `weights ${mb(estimate.weightBytes)}, activations ${mb(estimate.activationBytes)} for samples of shape ` +
        `${JSON.stringify(estimate.sample)} at batch ${Math.max(estimate.batchSize, 1)}); the per-job limit is ` +
        `${limits.maxMemoryMb.toLocaleString('en')} MB (JOB_MAX_MEMORY_MB): use a smaller options.inputShape or finetune.batchSize`,
    );
  }
  if (estimate.computeSeconds > limits.maxComputeSeconds) {
    throw new UnprocessableError(
      `the job needs an estimated ${estimate.computeSeconds.toLocaleString('en')} s of compute (${estimate.steps.toLocaleString('en')} ` +
        `steps x batch ${estimate.batchSize} x ${estimate.macsPerSample.toLocaleString('en')} MACs per sample); the per-job limit is ` +
        `${limits.maxComputeSeconds.toLocaleString('en')} s (JOB_MAX_COMPUTE_SECONDS): use fewer finetune.steps/epochs or finetune.maxSamples`,
    );
  }
}

export class QuotaExceededError extends ApiError {
  constructor(
    detail: string,
    readonly retryAfterSeconds: number,
  ) {
    super(429, 'quota-exceeded', 'Quota exceeded', detail);
  }
}

export interface TenantQuotas {
  maxActiveJobs: number;
  maxComputeSecondsPerHour: number;
}

const HOUR_MS = 3600_000;
/** Retry-After when the tenant has too many unfinished jobs: they end at an unknown time. */
const ACTIVE_RETRY_AFTER_S = 60;

/**
 * 429 when the tenant already has its quota of queued + running jobs, or when this job's estimated compute
 * would take the tenant's last hour over its quota (Retry-After: until enough of that hour has passed).
 * Checked before the insert, so concurrent requests of one tenant can overshoot by their number.
 */
export async function checkTenantQuotas(
  prisma: PrismaClient,
  tenantId: string,
  estimate: JobEstimate,
  quotas: TenantQuotas,
  now = new Date(),
): Promise<void> {
  const active = await prisma.job.count({ where: { tenantId, status: { in: ['queued', 'running'] } } });
  if (active >= quotas.maxActiveJobs) {
    throw new QuotaExceededError(
      `this tenant has ${active} queued or running jobs, the quota (TENANT_MAX_ACTIVE_JOBS ${quotas.maxActiveJobs}); wait for some to finish or cancel one`,
      ACTIVE_RETRY_AFTER_S,
    );
  }
  const since = new Date(now.getTime() - HOUR_MS);
  const window = { tenantId, createdAt: { gt: since }, estimatedComputeSeconds: { gt: 0 } };
  const total = (await prisma.job.aggregate({ where: window, _sum: { estimatedComputeSeconds: true } }))._sum.estimatedComputeSeconds ?? 0;
  if (total + estimate.computeSeconds <= quotas.maxComputeSecondsPerHour) return;
  if (estimate.computeSeconds > quotas.maxComputeSecondsPerHour) {
    throw new UnprocessableError(
      `the job needs an estimated ${estimate.computeSeconds.toLocaleString('en')} s of compute, more than the tenant's hourly quota of ` +
        `${quotas.maxComputeSecondsPerHour.toLocaleString('en')} s (TENANT_MAX_COMPUTE_SECONDS_PER_HOUR); use fewer finetune.steps`,
    );
  }
  // The earliest moment when the jobs that have left the window make room for this one.
  const recent = await prisma.job.findMany({ where: window, select: { createdAt: true, estimatedComputeSeconds: true }, orderBy: { createdAt: 'asc' } });
  let used = total;
  let retryAt = now.getTime();
  for (const job of recent) {
    used -= job.estimatedComputeSeconds ?? 0;
    retryAt = job.createdAt.getTime() + HOUR_MS;
    if (used + estimate.computeSeconds <= quotas.maxComputeSecondsPerHour) break;
  }
  const retryAfter = Math.max(1, Math.ceil((retryAt - now.getTime()) / 1000));
  throw new QuotaExceededError(
    `this tenant's jobs of the last hour need an estimated ${Math.round(total).toLocaleString('en')} s of compute and this one ` +
      `${estimate.computeSeconds.toLocaleString('en')} s; the quota is ${quotas.maxComputeSecondsPerHour.toLocaleString('en')} s per hour ` +
      `(TENANT_MAX_COMPUTE_SECONDS_PER_HOUR); retry in ${retryAfter} s`,
    retryAfter,
  );
}

/** Everything POST /v1/jobs checks before the insert: the estimate, the per-job limits, the tenant's quotas. */
export async function admitJob(
  prisma: PrismaClient,
  config: Pick<Config, 'jobMaxMemoryMb' | 'jobMaxComputeSeconds' | 'engineMacsPerSecond' | 'tenantMaxActiveJobs' | 'tenantMaxComputeSecondsPerHour'>,
  tenantId: string,
  input: EstimateInput,
): Promise<JobEstimate> {
  const estimate = estimateJob(input, config.engineMacsPerSecond);
  checkJobLimits(estimate, { maxMemoryMb: config.jobMaxMemoryMb, maxComputeSeconds: config.jobMaxComputeSeconds, macsPerSecond: config.engineMacsPerSecond });
  await checkTenantQuotas(prisma, tenantId, estimate, {
    maxActiveJobs: config.tenantMaxActiveJobs,
    maxComputeSecondsPerHour: config.tenantMaxComputeSecondsPerHour,
  });
  return estimate;
}
