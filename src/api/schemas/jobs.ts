// Jobs: the create request, the job as the API shows it, its progress events, and the DB → API field helpers.
import { z } from 'zod';
import { JobOptionsSchema } from '../../contract/job-options.js';
import { NEXT_CURSOR, PageQuerySchema, int32, int64 } from './common.js';
import { BUILTIN_DATASETS } from './models.js';

// Job options are part of the contract with the engine (src/contract/job-options.ts, exported to its JSON Schema).
export { FinetuneOptionsSchema, JobOptionsSchema, type JobOptions } from '../../contract/job-options.js';

export const CreateJobBodySchema = z
  .object({
    modelId: z.uuid({ error: 'modelId must be the id of an uploaded model (a UUID)' }),
    datasetId: z
      .string()
      .refine((value) => (BUILTIN_DATASETS as readonly string[]).includes(value) || z.uuid().safeParse(value).success, {
        error: `datasetId must be a dataset id (UUID) or one of ${BUILTIN_DATASETS.join(', ')}`,
      })
      .optional()
      .describe(`an uploaded dataset's id, or one of ${BUILTIN_DATASETS.join(', ')}`),
    options: JobOptionsSchema.default({ rule: 'vbmf' }),
  })
  .strict()
  .superRefine((body, ctx) => {
    if (body.options.finetune && body.datasetId === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['datasetId'],
        message: 'fine-tuning needs data: set datasetId (an uploaded dataset or builtin:fashion-mnist) or remove options.finetune',
      });
    }
  })
  .meta({ id: 'CreateJobRequest' });

export const JOB_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'canceled'] as const;
export const JobStatusSchema = z.enum(JOB_STATUSES).meta({ id: 'JobStatus', description: 'queued → running → succeeded | failed | canceled' });

/**
 * Every stage a job reports, in order: the worker's (staging, latency, verify, store), the engine's (analyze …
 * write), `done` once finished and `retrying` while a failed attempt waits for the next. test/openapi.test.ts
 * checks this list against what the engine and the worker emit.
 */
export const JOB_STAGES = [
  'staging',
  'latency',
  'analyze',
  'plan',
  'rewrite',
  'finetune',
  'evaluate',
  'write',
  'verify',
  'store',
  'done',
  'retrying',
] as const;
export const JobStageSchema = z.enum(JOB_STAGES).meta({ id: 'JobStage' });

export const ERROR_CATEGORIES = ['bad_input', 'resource_exhausted', 'engine_crash', 'timeout', 'canceled', 'internal'] as const;
export const JobErrorSchema = z
  .looseObject({
    category: z
      .enum(ERROR_CATEGORIES)
      .describe(
        'bad_input: fix the model, dataset or options (not retried); resource_exhausted: the job needs more memory or time ' +
          'than a worker grants (not retried); engine_crash, internal: a fault of the service (retried); timeout; canceled',
      ),
    message: z.string(),
  })
  .meta({ id: 'JobError' });

export const JobCreatedSchema = z.looseObject({ id: z.uuid(), status: JobStatusSchema }).meta({ id: 'JobCreated' });

const ratio = (what: string) => z.number().describe(`${what}: before ÷ after (2 = half as many)`);
const fraction = (what: string) => z.number().min(0).max(1).describe(what);

/**
 * A job's headline numbers, camelCase. Counts are before/after pairs; every *Reduction is before ÷ after.
 * Keys not listed here (e.g. speedupBatch8, stageSeconds<Stage>) are numbers too.
 */
export const JobMetricsSchema = z
  .looseObject({
    paramsBefore: int64('weights of the original model'),
    paramsAfter: int64('weights of the compressed model'),
    paramsReduction: ratio('weights'),
    macsBefore: int64('multiply-accumulates per inference of the original model'),
    macsAfter: int64('multiply-accumulates per inference of the compressed model'),
    macsReduction: ratio('MACs'),
    top1Original: fraction('top-1 accuracy of the original model on the held-out split'),
    top1Compressed: fraction('top-1 accuracy after the rewrite, before fine-tuning'),
    top1Finetuned: fraction('top-1 accuracy after fine-tuning'),
    top5Original: fraction('top-5 accuracy of the original model'),
    top5Compressed: fraction('top-5 accuracy after the rewrite'),
    top5Finetuned: fraction('top-5 accuracy after fine-tuning'),
    agreementCompressed: fraction('share of samples where the compressed and the original model agree on top-1'),
    agreementFinetuned: fraction('the same after fine-tuning'),
    finetuneWallSeconds: z.number().describe('seconds of fine-tuning'),
    finetuneImagesPerSecond: z.number(),
    finetuneSteps: int64('optimizer steps'),
    latencyMsBefore: z.number().describe('onnxruntime-node latency at batch 1, milliseconds'),
    latencyMsAfter: z.number(),
    latencyMsReduction: ratio('latency'),
    energyMjEstimateBefore: z.number().describe('estimated energy per inference, millijoules'),
    energyMjEstimateAfter: z.number(),
    energyMjEstimateReduction: ratio('estimated energy'),
    maxRelativeError: z.number().describe('largest relative output error of the compressed model on random inputs'),
    top1Agreement: fraction('top-1 agreement with the original model on random inputs'),
  })
  .partial()
  .catchall(z.number())
  .meta({ id: 'JobMetrics' });

export const STAGE_PROGRESS_DESCRIPTION =
  'the current stage: `done` of `total` units, a rate in units per second and the seconds left at that rate ' +
  '(null until two updates of the stage have been seen, and for stages whose total is not known)';

export const StageProgressSchema = z
  .looseObject({
    stage: JobStageSchema,
    done: z.number().min(0),
    total: z.number().min(0),
    rate: z.number().min(0).nullable().describe('units of this stage per second'),
    etaSeconds: z.number().min(0).nullable().describe('seconds until this stage is done at the current rate'),
    message: z.string().optional(),
  })
  .meta({ id: 'StageProgress', description: STAGE_PROGRESS_DESCRIPTION });

export const JobSchema = z
  .looseObject({
    id: z.uuid(),
    status: JobStatusSchema,
    stage: JobStageSchema.nullable().describe('null until a worker has picked the job up'),
    progress: z.number().min(0).max(1).describe('the whole job, 0..1'),
    percent: z.number().min(0).max(100),
    stageProgress: StageProgressSchema.nullable()
      .optional()
      .describe('GET /v1/jobs/{id} of a running job: how far the current stage is; null while queued and once finished'),
    modelId: z.uuid(),
    datasetId: z.string().nullable().describe("an uploaded dataset's id or a builtin:* name"),
    options: JobOptionsSchema,
    attempts: int32('engine runs so far (a crashed run is retried)'),
    createdAt: z.iso.datetime(),
    startedAt: z.iso.datetime().nullable(),
    finishedAt: z.iso.datetime().nullable(),
    timings: z.record(z.string(), z.number()).nullable().describe('seconds per engine stage'),
    metrics: JobMetricsSchema.nullable().describe('null until the job has succeeded'),
    error: JobErrorSchema.nullable(),
  })
  .meta({ id: 'Job' });

export const JobListQuerySchema = PageQuerySchema.extend({ status: JobStatusSchema.optional() }).strict();
export const JobPageSchema = z
  .looseObject({ items: z.array(JobSchema), nextCursor: z.uuid().nullable().describe(NEXT_CURSOR) })
  .meta({ id: 'JobPage' });

// ---------------------------------------------------------------- Server-Sent Events

export const JobProgressEventDataSchema = z
  .looseObject({
    stage: JobStageSchema,
    done: z.number().min(0),
    total: z.number().min(0),
    percent: z.number().min(0).max(100).describe('the whole job'),
    rate: z.number().min(0).nullable().describe('units of this stage per second'),
    etaSeconds: z.number().min(0).nullable().describe('seconds until this stage is done at the current rate'),
    message: z.string().optional(),
  })
  .meta({ id: 'JobProgress' });

/**
 * The `data` of one Server-Sent Event of GET /v1/jobs/{id}/events. The SSE event name says which schema it
 * is (`x-sse-events`); the payloads also tell themselves apart: a Job has `status`, a JobProgress `done`.
 */
export const JobEventSchema = z
  .union([JobSchema, JobProgressEventDataSchema])
  .meta({
    id: 'JobEventData',
    description:
      'The JSON `data` of one event of the stream, by SSE event name: `status` → Job (on connect and whenever status, stage ' +
      'or progress change; the last event of a stream has a terminal status), `progress` → JobProgress (while the job runs). ' +
      '`id` is a sequence number within the stream; comment lines (`: keep-alive`) come every 15 s.',
    'x-sse-events': {
      status: { $ref: '#/components/schemas/Job' },
      progress: { $ref: '#/components/schemas/JobProgress' },
    },
  });

// ---------------------------------------------------------------- DB → API field helpers

/** `stage` as stored (free text written by the worker) → the documented enum; an unknown stage reads as null. */
export function apiStage(stage: string | null): JobStage | null {
  return (JOB_STAGES as readonly string[]).includes(stage ?? '') ? (stage as JobStage) : null;
}
export type JobStage = (typeof JOB_STAGES)[number];

/** The worker stores metric names snake_case (top1_original); the API shows them camelCase (top1Original). */
export function apiMetrics(metrics: unknown): z.input<typeof JobMetricsSchema> | null {
  if (typeof metrics !== 'object' || metrics === null || Array.isArray(metrics)) return null;
  const out: Record<string, number> = {};
  for (const [key, value] of Object.entries(metrics)) {
    if (typeof value === 'number' && Number.isFinite(value)) out[key.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase())] = value;
  }
  return out;
}

export type ApiJobOptions = z.output<typeof JobOptionsSchema>;

/** errorCategory/errorMessage columns → the documented error object; a category the API does not know reads as internal. */
export function apiJobError(category: string | null, message: string | null): z.output<typeof JobErrorSchema> | null {
  if (!category) return null;
  const known = (ERROR_CATEGORIES as readonly string[]).includes(category);
  return { category: known ? (category as (typeof ERROR_CATEGORIES)[number]) : 'internal', message: message ?? '' };
}
