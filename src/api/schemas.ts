// Request and response schemas: one zod schema per shape, used for validation, TypeScript types and the
// generated openapi.yaml at once. Request schemas are strict (an unknown field is a 400); response schemas are
// open (clients must accept fields added later), which the OpenAPI document states by leaving
// additionalProperties out.
import { z } from 'zod';
import { JobOptionsSchema } from '../contract/job-options.js';

export const BUILTIN_DATASETS = ['builtin:fashion-mnist'] as const;

/** A count that may pass 2^31 (ResNet-50 has 4.1 G MACs): int64 in the document, a JS number in practice. */
export const int64 = (description?: string) => {
  const schema = z.number().int().meta({ format: 'int64' });
  return description ? schema.describe(description) : schema;
};
export const int32 = (description?: string) => {
  const schema = z.number().int().meta({ format: 'int32' });
  return description ? schema.describe(description) : schema;
};

export const FieldErrorSchema = z
  .looseObject({
    in: z.enum(['body', 'query', 'path', 'header']).describe('the part of the request the pointer is into'),
    pointer: z
      .string()
      .describe('RFC 6901 JSON Pointer into that part, e.g. `/options/ratio` (query, path and headers read as one JSON object each: `/limit`); empty for the whole part'),
    detail: z.string(),
  })
  .meta({ id: 'FieldError' });

export const ProblemSchema = z
  .looseObject({
    type: z.string().describe('a URI naming the problem type; GET /problems/{type} documents each one'),
    title: z.string(),
    status: int32('the HTTP status'),
    detail: z.string().describe('what went wrong and what to change'),
    instance: z.string().optional().describe('the request path'),
    errors: z.array(FieldErrorSchema).optional().describe('one entry per invalid field (400)'),
  })
  .meta({ id: 'Problem', description: 'RFC 9457 problem details' });

export const IdParamsSchema = z.object({ id: z.uuid({ error: 'the id in the path must be a UUID' }) });

export const NEXT_CURSOR = 'pass as `cursor` to get the next page; null on the last page';

export const PageQuerySchema = z
  .object({
    limit: z.coerce.number().int().min(1).max(100).default(20).describe('page size, 1..100'),
    cursor: z
      .uuid({ error: 'cursor must be the nextCursor of a previous page' })
      .optional()
      .describe('the nextCursor of the previous page'),
  })
  .strict();

export const TensorInfoSchema = z
  .looseObject({
    name: z.string(),
    type: z.string().describe('element type, e.g. float32'),
    dims: z
      .array(z.union([z.number().int(), z.string(), z.null()]))
      .describe('numbers; strings for symbolic dims; null where the model declares none'),
  })
  .meta({ id: 'TensorInfo' });

export const ModelSchema = z
  .looseObject({
    id: z.uuid(),
    name: z.string(),
    sha256: z.string().describe('of the uploaded bytes, hex'),
    bytes: int64(),
    opset: int32(),
    inputs: z.array(TensorInfoSchema),
    outputs: z.array(TensorInfoSchema),
    params: int64()
      .nullable()
      .describe('weights count: every initializer element at upload, replaced by the engine analysis (weights only) once it has run; null if neither is known'),
    macs: int64()
      .nullable()
      .describe('multiply-accumulates per inference at the model input size; null until the engine analysis has run (or when it failed)'),
    analysis: z
      .enum(['pending', 'done', 'failed'])
      .describe('the engine analysis a worker runs after the upload: `pending` until it fills `params` and `macs` (`done`), or gives up (`failed`)'),
    createdAt: z.iso.datetime(),
  })
  .meta({ id: 'Model' });

export const ModelPageSchema = z
  .looseObject({ items: z.array(ModelSchema), nextCursor: z.uuid().nullable().describe(NEXT_CURSOR) })
  .meta({ id: 'ModelPage' });

export const DatasetSchema = z
  .looseObject({
    id: z.uuid(),
    name: z.string(),
    format: z.enum(['npz', 'zip']),
    sha256: z.string(),
    bytes: int64(),
    info: z.looseObject({}).describe('what the inspection found: sample count, shapes, dtypes, classes'),
    createdAt: z.iso.datetime(),
  })
  .meta({ id: 'Dataset' });

export const DatasetPageSchema = z
  .looseObject({ items: z.array(DatasetSchema), nextCursor: z.uuid().nullable().describe(NEXT_CURSOR) })
  .meta({ id: 'DatasetPage' });

// Job options are part of the contract with the engine (src/contract/job-options.ts, exported to its JSON Schema).
export { FinetuneOptionsSchema, JobOptionsSchema, type JobOptions } from '../contract/job-options.js';

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

// ---------------------------------------------------------------- the report

const BeforeAfterSchema = z
  .looseObject({
    before: int64(),
    after: int64(),
    ratio: z.number().nullable().optional().describe('after ÷ before'),
  })
  .meta({ id: 'BeforeAfter' });

const ComparisonSchema = z
  .looseObject({
    before: z.number().nullable(),
    after: z.number().nullable(),
    ratio: z.number().nullable().describe('before ÷ after'),
  })
  .meta({ id: 'Comparison' });

const ReportTensorSchema = z.looseObject({ name: z.string(), shape: z.array(z.union([z.number().int(), z.string(), z.null()])) });

export const ReportLayerSchema = z
  .looseObject({
    name: z.string().describe('the ONNX node'),
    op: z.string().describe('Conv, Gemm or MatMul'),
    kind: z.string().describe('the rewrite: tucker2, svd, … or keep'),
    ranks: z.array(z.number().int()),
    reason: z.string().nullable().optional().describe('why the layer was rewritten or kept'),
    params: BeforeAfterSchema,
    macs: BeforeAfterSchema,
    relError: z.number().nullable().optional().describe('relative reconstruction error of the weight'),
  })
  .meta({ id: 'ReportLayer' });

const OpenObject = z.looseObject({});

export const ReportSchema = z
  .looseObject({
    jobId: z.string().optional(),
    rule: z.string().optional().describe('the rank selection rule that was applied'),
    model: z
      .looseObject({
        sha256: z.string(),
        bytes: int64(),
        opset: int32(),
        inputShape: z.array(z.number().int()).describe('[N, C, H, W] the shapes and MACs were computed at'),
        params: int64(),
        macs: int64(),
        inputs: z.array(ReportTensorSchema),
        outputs: z.array(ReportTensorSchema),
      })
      .partial()
      .optional()
      .describe('the original model'),
    compressed: z.looseObject({ bytes: int64(), params: int64(), macs: int64() }).partial().optional(),
    options: OpenObject.optional().describe('the options as the engine applied them'),
    layers: z.array(ReportLayerSchema),
    totals: z
      .looseObject({ params: BeforeAfterSchema, macs: BeforeAfterSchema })
      .describe('whole-model weights and MACs; ratio = after ÷ before'),
    fidelity: OpenObject.nullable().optional(),
    accuracy: OpenObject.nullable().optional().describe('top-1/top-5 on the held-out split, when the job had labelled data'),
    finetune: OpenObject.nullable().optional(),
    timings: z.record(z.string(), z.number()).optional().describe('seconds per engine stage'),
    measurement: z
      .looseObject({
        table1: z
          .looseObject({
            weights: ComparisonSchema,
            macs: ComparisonSchema,
            latencyMs: ComparisonSchema,
            energyMillijoulesEstimate: ComparisonSchema,
          })
          .describe("the paper's Table 1 as onnxruntime-node measured it"),
      })
      .nullable()
      .optional()
      .describe('onnxruntime-node measurements of both models'),
  })
  .meta({ id: 'Report', description: "The engine's report: the per-layer plan, totals, accuracy, timings and measurements. Immutable once the job has succeeded." });

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

// ---------------------------------------------------------------- operations

export const HealthSchema = z.looseObject({ status: z.literal('ok') }).meta({ id: 'Health' });
export const ReadySchema = z
  .looseObject({
    status: z.literal('ready'),
    checks: z.record(z.string(), z.looseObject({ ok: z.boolean(), ms: z.number() })),
  })
  .meta({ id: 'Ready' });

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
export type ApiReport = z.input<typeof ReportSchema>;
