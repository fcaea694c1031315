// Request and response schemas: one zod schema per shape, used for validation, TypeScript types and the
// generated openapi.yaml at once.
import { z } from 'zod';

export const BUILTIN_DATASETS = ['builtin:fashion-mnist'] as const;

export const ProblemSchema = z
  .object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    detail: z.string(),
    instance: z.string().optional(),
    errors: z.array(z.object({ pointer: z.string(), detail: z.string() })).optional(),
  })
  .meta({ id: 'Problem', description: 'RFC 9457 problem details' });

export const IdParamsSchema = z.object({ id: z.uuid({ error: 'the id in the path must be a UUID' }) });

export const PageQuerySchema = z
  .object({
    limit: z.coerce.number().int().min(1).max(100).default(20).describe('page size, 1..100'),
    cursor: z.uuid({ error: 'cursor must be the nextCursor of a previous page' }).optional(),
  })
  .strict();

const TensorInfoSchema = z.object({
  name: z.string(),
  type: z.string().describe('element type, e.g. float32'),
  dims: z
    .array(z.union([z.number().int(), z.string(), z.null()]))
    .describe('numbers; strings for symbolic dims; null where the model declares none'),
});

export const ModelSchema = z
  .object({
    id: z.uuid(),
    name: z.string(),
    sha256: z.string(),
    bytes: z.number().int(),
    opset: z.number().int(),
    inputs: z.array(TensorInfoSchema),
    outputs: z.array(TensorInfoSchema),
    params: z.number().int().nullable().describe('weights count from the engine analysis; null until known'),
    macs: z.number().int().nullable().describe('multiply-accumulates at the model input size; null until known'),
    createdAt: z.iso.datetime(),
  })
  .meta({ id: 'Model' });

export const ModelPageSchema = z.object({ items: z.array(ModelSchema), nextCursor: z.uuid().nullable() });

export const DatasetSchema = z
  .object({
    id: z.uuid(),
    name: z.string(),
    format: z.enum(['npz', 'zip']),
    sha256: z.string(),
    bytes: z.number().int(),
    info: z.record(z.string(), z.unknown()),
    createdAt: z.iso.datetime(),
  })
  .meta({ id: 'Dataset' });

export const DatasetPageSchema = z.object({ items: z.array(DatasetSchema), nextCursor: z.uuid().nullable() });

const unit = (name: string) =>
  z.number({ error: `${name} must be a number` }).gt(0, `${name} must be > 0`).lte(1, `${name} must be ≤ 1`);
const openUnit = (name: string) =>
  z.number({ error: `${name} must be a number` }).gt(0, `${name} must be > 0`).lt(1, `${name} must be < 1`);

export const FinetuneOptionsSchema = z
  .object({
    epochs: z.number().int('finetune.epochs must be a whole number').gt(0, 'finetune.epochs must be > 0').max(1000).optional(),
    steps: z.number().int().gt(0, 'finetune.steps must be a positive integer').max(10_000_000).optional(),
    lr: z.number().gt(0, 'finetune.lr must be > 0').max(10).optional(),
    optimizer: z.enum(['sgd', 'adamw']).optional().describe('default sgd (momentum 0.9); adamw'),
    weightDecay: z.number().min(0).max(1).optional(),
    warmupSteps: z.number().int().min(0).optional(),
    distill: z.boolean().optional().describe('distil from the original model (default true; works without labels)'),
    temperature: z.number().gt(0, 'finetune.temperature must be > 0').max(100).optional(),
    alpha: z.number().min(0).max(1).optional().describe('weight of the distillation loss against cross-entropy'),
    labels: z.boolean().optional().describe('use the dataset labels for cross-entropy when present (default true)'),
    batchSize: z.number().int().min(2, 'finetune.batchSize must be ≥ 2').max(4096).optional(),
    maxSamples: z.number().int().min(1).optional(),
    evalSamples: z.number().int().min(1).optional(),
    checkpointEvery: z.number().int().min(1).optional(),
    clipGradNorm: z.number().min(0).optional(),
  })
  .strict()
  .meta({ id: 'FinetuneOptions', description: 'present = fine-tune the compressed model; absent = no fine-tuning' });

const RULE_FIELDS = {
  ratio: ['ratio'],
  budget: ['targetMacs', 'targetParams'],
  latency: ['targetLatency'],
} as const;

export const JobOptionsSchema = z
  .object({
    rule: z.enum(['vbmf', 'ratio', 'budget', 'latency']).default('vbmf').describe('rank selection rule'),
    ratio: unit('ratio').optional().describe('rule=ratio: kept fraction of each rank, (0, 1]'),
    strength: unit('strength').optional().describe('weakened VBMF strength, (0, 1]'),
    targetMacs: openUnit('targetMacs').optional().describe('rule=budget: target MACs as a fraction of the original'),
    targetParams: openUnit('targetParams').optional().describe('rule=budget: target weights as a fraction'),
    targetLatency: openUnit('targetLatency').optional().describe('rule=latency: target latency as a fraction'),
    roundTo: z.number().int().min(1).max(256).optional().describe('round ranks to a multiple of this'),
    force: z.boolean().optional().describe('decompose layers even when it does not pay off'),
    inputShape: z
      .tuple([
        z.number().int().min(1).max(1024),
        z.number().int().min(1).max(4096),
        z.number().int().min(1).max(8192),
        z.number().int().min(1).max(8192),
      ])
      .optional()
      .describe('[N, C, H, W] used for shapes and MACs when the model input has symbolic dims'),
    finetune: FinetuneOptionsSchema.optional(),
  })
  .strict()
  .superRefine((options, ctx) => {
    if (options.rule === 'ratio' && options.ratio === undefined) {
      ctx.addIssue({ code: 'custom', path: ['ratio'], message: 'rule=ratio needs ratio in (0, 1]' });
    }
    if (options.rule === 'budget' && options.targetMacs === undefined && options.targetParams === undefined) {
      ctx.addIssue({ code: 'custom', path: ['targetMacs'], message: 'rule=budget needs targetMacs or targetParams in (0, 1)' });
    }
    if (options.rule === 'latency' && options.targetLatency === undefined) {
      ctx.addIssue({ code: 'custom', path: ['targetLatency'], message: 'rule=latency needs targetLatency in (0, 1)' });
    }
    if (options.rule === 'ratio' && options.strength !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['strength'], message: 'strength weakens EVBMF ranks and does not apply to rule=ratio; remove strength or pick another rule' });
    }
    for (const [rule, fields] of Object.entries(RULE_FIELDS)) {
      for (const field of fields) {
        if (options.rule !== rule && options[field] !== undefined) {
          ctx.addIssue({ code: 'custom', path: [field], message: `${field} applies only to rule=${rule}; set rule=${rule} or remove ${field}` });
        }
      }
    }
  })
  .meta({ id: 'JobOptions' });

export type JobOptions = z.output<typeof JobOptionsSchema>;

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
  });

export const JOB_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'canceled'] as const;
export const JobStatusSchema = z.enum(JOB_STATUSES);

export const JobCreatedSchema = z.object({ id: z.uuid(), status: JobStatusSchema }).meta({ id: 'JobCreated' });

export const JobSchema = z
  .object({
    id: z.uuid(),
    status: JobStatusSchema,
    stage: z.string().nullable().describe('analyze | plan | rewrite | finetune | evaluate | write'),
    progress: z.number().min(0).max(1),
    percent: z.number().min(0).max(100),
    modelId: z.uuid(),
    datasetId: z.string().nullable(),
    options: z.record(z.string(), z.unknown()),
    attempts: z.number().int(),
    createdAt: z.iso.datetime(),
    startedAt: z.iso.datetime().nullable(),
    finishedAt: z.iso.datetime().nullable(),
    timings: z.record(z.string(), z.number()).nullable().describe('seconds per engine stage'),
    metrics: z.record(z.string(), z.unknown()).nullable(),
    error: z
      .object({ category: z.string(), message: z.string() })
      .nullable()
      .describe('category: bad_input | engine_crash | timeout | canceled | internal'),
  })
  .meta({ id: 'Job' });

export const JobListQuerySchema = PageQuerySchema.extend({ status: JobStatusSchema.optional() }).strict();
export const JobPageSchema = z.object({ items: z.array(JobSchema), nextCursor: z.uuid().nullable() });

export const ReportSchema = z.record(z.string(), z.unknown()).meta({ id: 'Report', description: "the engine's report.json" });

export const HealthSchema = z.object({ status: z.literal('ok') });
export const ReadySchema = z.object({
  status: z.literal('ready'),
  checks: z.record(z.string(), z.object({ ok: z.boolean(), ms: z.number() })),
});
