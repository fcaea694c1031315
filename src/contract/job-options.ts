/**
 * Job options: the one definition of what a client may ask for (POST /v1/jobs) and of what the engine
 * accepts in job.json. `npm run contract` exports the engine's variant as JSON Schema into
 * engine/tuckerize/schema/job_options.json, which the engine validates job.json against (options.py);
 * test/contract.test.ts fails when that file drifts from this one.
 *
 * The two variants differ in one place: for rule=latency the client gives targetLatency and the worker,
 * after timing candidate layers, adds the targetMacs it derived and the path of its latencyTable.
 * Everything else the engine refuses, the API refuses first, with a 422 naming the field.
 */
import { z } from 'zod';

export const RANK_RULES = ['vbmf', 'ratio', 'budget', 'latency'] as const;
export type RankRule = (typeof RANK_RULES)[number];
export const DEFAULT_RULE: RankRule = 'vbmf';

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
    clipGradNorm: z
      .number()
      .min(0, 'finetune.clipGradNorm must be ≥ 0 (0 turns clipping off)')
      .max(1e6, 'finetune.clipGradNorm must be ≤ 1e6')
      .optional()
      .describe('clip the gradient norm at this value (default 5; 0 = no clipping)'),
    featureWeight: z
      .number()
      .min(0, 'finetune.featureWeight must be ≥ 0 (0 turns feature distillation off)')
      .max(1000)
      .optional()
      .describe('weight of feature distillation at the rewritten layers (relative squared error of each output)'),
    evalEvery: z
      .number()
      .gt(0, 'finetune.evalEvery must be > 0')
      .max(1000)
      .optional()
      .describe('also check the held-out split every this many epochs (e.g. 0.25), recorded in the history'),
  })
  .strict()
  .meta({ id: 'FinetuneOptions', description: 'present = fine-tune the compressed model; absent = no fine-tuning' });

const clientFields = {
  rule: z.enum(RANK_RULES).default(DEFAULT_RULE).describe('rank selection rule'),
  ratio: unit('ratio').optional().describe('rule=ratio: kept fraction of each rank, (0, 1]'),
  strength: unit('strength').optional().describe('rule=vbmf: weakened EVBMF strength, (0, 1]'),
  targetMacs: openUnit('targetMacs').optional().describe('rule=budget: target MACs as a fraction of the original'),
  targetParams: openUnit('targetParams').optional().describe('rule=budget: target weights as a fraction'),
  targetLatency: openUnit('targetLatency').optional().describe('rule=latency: target latency as a fraction'),
  roundTo: z.number().int().min(1).max(256).optional().describe('round ranks to a multiple of this (overrides target)'),
  target: z
    .union([
      z.enum(['host', 'avx512', 'avx2', 'generic']),
      z.object({ block: z.number().int().min(1, 'target.block must be ≥ 1 (1 turns rounding off)').max(64) }).strict(),
    ])
    .optional()
    .describe('deployment CPU whose ONNX Runtime channel block (avx512: 16, avx2: 8, generic: 4) every rank is '
      + 'rounded to; default host (the machine that compresses); {"block": N} for an explicit multiple, 1 = no rounding. '
      + 'Under rule vbmf the aligned ranks stay within the MACs of EVBMF\'s own ranks; the other rules round up'),
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
  method: z
    .enum(['improved', 'paper'])
    .optional()
    .describe('improved (default): layer selection, rank floor 8, and with a dataset the ranks re-allocated by '
      + 'the layers\' response energy within the plan\'s MACs (rules vbmf and budget) and calibration; paper: Kim '
      + 'et al. 2016 exactly (every eligible layer at the rule\'s ranks, no rank rounding, no calibration)'),
  calibrationSamples: z
    .number()
    .int('calibrationSamples must be a whole number')
    .min(0, 'calibrationSamples must be ≥ 0 (0 turns calibration off)')
    .max(60000)
    .optional()
    .describe('training images (labels not needed) used to re-allocate the ranks (rules vbmf and budget) and to '
      + 'calibrate the rewritten layers before fine-tuning; default 1024 with a dataset and method improved, 0 = off'),
  maxAccuracyDrop: z
    .number({ error: 'maxAccuracyDrop must be a number' })
    .gt(0, 'maxAccuracyDrop must be > 0')
    .max(100, 'maxAccuracyDrop must be ≤ 100')
    .optional()
    .describe('accuracy-target mode: the most compressed model whose top-1 on the held-out split is at most this '
      + 'many points below the original (rule vbmf; needs a labelled dataset). Each candidate MACs target is planned, '
      + 're-allocated and calibrated as a vbmf job is, then briefly fine-tuned and scored; the report holds the '
      + 'trade-off curve'),
};

const workerFields = {
  latencyTable: z
    .string()
    .regex(/^\//, 'latencyTable must be an absolute path')
    .optional()
    .describe("rule=latency, set by the worker: the absolute path of the latency-table.json it measured"),
};

type OptionKey = keyof typeof clientFields | keyof typeof workerFields;

/** Per rule: the fields it needs, needs exactly one of, refuses, and the pairs it refuses together. */
export interface RuleFields {
  required?: readonly OptionKey[];
  oneOf?: readonly [OptionKey, OptionKey];
  forbidden: readonly OptionKey[];
  exclusive?: readonly (readonly [OptionKey, OptionKey])[];
}
export type RuleTable = Readonly<Record<RankRule, RuleFields>>;

/** What a client may combine. rule=latency leaves targetMacs and the strength to the worker's measurements. */
export const CLIENT_RULE_FIELDS: RuleTable = {
  vbmf: { forbidden: ['ratio', 'targetMacs', 'targetParams', 'targetLatency'], exclusive: [['maxAccuracyDrop', 'strength']] },
  ratio: { required: ['ratio'], forbidden: ['strength', 'targetMacs', 'targetParams', 'targetLatency', 'maxAccuracyDrop'] },
  budget: { oneOf: ['targetMacs', 'targetParams'], forbidden: ['ratio', 'strength', 'targetLatency', 'maxAccuracyDrop'] },
  latency: { required: ['targetLatency'], forbidden: ['ratio', 'strength', 'targetMacs', 'targetParams', 'maxAccuracyDrop'] },
};

/** What the engine plans with (plan.make_plan's checks): the client's rules plus the worker's latency fields. */
export const ENGINE_RULE_FIELDS: RuleTable = {
  vbmf: { forbidden: ['ratio', 'targetMacs', 'targetParams', 'targetLatency', 'latencyTable'], exclusive: [['maxAccuracyDrop', 'strength']] },
  ratio: { required: ['ratio'], forbidden: ['strength', 'targetMacs', 'targetParams', 'targetLatency', 'latencyTable', 'maxAccuracyDrop'] },
  budget: { oneOf: ['targetMacs', 'targetParams'], forbidden: ['ratio', 'strength', 'targetLatency', 'latencyTable', 'maxAccuracyDrop'] },
  latency: { required: ['latencyTable'], forbidden: ['ratio', 'targetParams', 'maxAccuracyDrop'], exclusive: [['targetMacs', 'strength']] },
};

export interface RuleViolation {
  field: OptionKey;
  message: string;
  /** what the violated constraint requires of the options object, as JSON Schema */
  schema: Record<string, unknown>;
}

/** Every constraint of `table`, each with the field a violation names and the message it gives. */
export function ruleConstraints(table: RuleTable): { rule: RankRule; field: OptionKey; message: string; schema: Record<string, unknown> }[] {
  const appliesTo = (field: OptionKey) =>
    RANK_RULES.filter((rule) => !table[rule].forbidden.includes(field)).map((rule) => `rule=${rule}`);
  const out: { rule: RankRule; field: OptionKey; message: string; schema: Record<string, unknown> }[] = [];
  for (const rule of RANK_RULES) {
    const fields = table[rule];
    for (const field of fields.required ?? []) {
      out.push({ rule, field, message: `rule=${rule} needs ${field}`, schema: { required: [field] } });
    }
    if (fields.oneOf) {
      const [a, b] = fields.oneOf;
      out.push({ rule, field: a, message: `rule=${rule} needs ${a} or ${b}`, schema: { anyOf: [{ required: [a] }, { required: [b] }] } });
      out.push({ rule, field: b, message: `rule=${rule} takes ${a} or ${b}, not both; remove one`, schema: { not: { required: [a, b] } } });
    }
    for (const field of fields.forbidden) {
      const where = appliesTo(field);
      const message =
        where.length === 0
          ? `${field} does not apply to any rule; remove ${field}`
          : `${field} applies only to ${where.join(' or ')}, not rule=${rule}; set ${where.length === 1 ? where[0] : 'one of those'} or remove ${field}`;
      out.push({ rule, field, message, schema: { not: { required: [field] } } });
    }
    for (const [a, b] of fields.exclusive ?? []) {
      out.push({ rule, field: b, message: `rule=${rule} with ${a} chooses the ${b} itself; remove ${b}`, schema: { not: { required: [a, b] } } });
    }
  }
  return out;
}

function present(options: Record<string, unknown>, field: string): boolean {
  return options[field] !== undefined;
}

/** The violations of `table` by `options` (rule defaulted), in the order ruleConstraints lists them. */
export function ruleViolations(options: Record<string, unknown>, table: RuleTable): RuleViolation[] {
  const rule = (options.rule ?? DEFAULT_RULE) as RankRule;
  const fields = table[rule];
  if (!fields) return [];
  return ruleConstraints(table)
    .filter((c) => c.rule === rule)
    .filter((c) => {
      const s = c.schema;
      if ('required' in s) return !present(options, c.field);
      if ('anyOf' in s) return !(fields.oneOf ?? []).some((f) => present(options, f));
      const both = (s.not as { required: string[] }).required;
      return both.every((f) => present(options, f));
    })
    .map(({ field, message, schema }) => ({ field, message, schema }));
}

function withRules<T extends z.ZodType<Record<string, unknown>>>(schema: T, table: RuleTable): T {
  return schema.superRefine((options, ctx) => {
    for (const violation of ruleViolations(options, table)) {
      ctx.addIssue({ code: 'custom', path: [violation.field], message: violation.message });
    }
  }) as unknown as T;
}

/** The options of POST /v1/jobs. */
export const JobOptionsSchema = withRules(z.object(clientFields).strict(), CLIENT_RULE_FIELDS).meta({ id: 'JobOptions' });
export type JobOptions = z.output<typeof JobOptionsSchema>;

/** The options of job.json: the client's, plus what the worker adds for rule=latency. */
export const EngineJobOptionsSchema = withRules(z.object({ ...clientFields, ...workerFields }).strict(), ENGINE_RULE_FIELDS);
export type EngineJobOptions = z.output<typeof EngineJobOptionsSchema>;

/**
 * The engine's options as JSON Schema (draft 2020-12): the field checks from zod, and the rule table as
 * `allOf` if/then entries, each carrying the message and the field a violation names (`x-field`).
 */
export function engineJobOptionsJsonSchema(): Record<string, unknown> {
  const base = z.toJSONSchema(EngineJobOptionsSchema, { io: 'input', target: 'draft-2020-12' }) as Record<string, unknown>;
  const ruleIs = (rule: RankRule) =>
    rule === DEFAULT_RULE
      ? { anyOf: [{ not: { required: ['rule'] } }, { properties: { rule: { const: rule } }, required: ['rule'] }] }
      : { properties: { rule: { const: rule } }, required: ['rule'] };
  const allOf = ruleConstraints(ENGINE_RULE_FIELDS).map((c) => ({
    description: c.message,
    'x-field': c.field,
    if: ruleIs(c.rule),
    then: c.schema,
  }));
  return {
    $schema: base.$schema,
    $id: 'https://tuckerize.invalid/schema/job_options.json',
    title: 'tuckerize job.json options',
    description:
      'Generated from src/contract/job-options.ts by `npm run contract`; do not edit. The engine validates the options ' +
      'of job.json against it; allOf holds the rank rules, each with its message and the field it names (x-field).',
    ...Object.fromEntries(Object.entries(base).filter(([key]) => key !== '$schema')),
    allOf,
  };
}

/** A model input as the model row keeps it: numbers for fixed dims, strings or null for symbolic ones. */
export interface ModelInputDims {
  name: string;
  dims: readonly (number | string | null)[];
}

/**
 * The engine's checks of the options against the model's first input (onnx_graph.resolve_input_shapes),
 * made when the job is created so that a job the engine would refuse is never queued: inputShape must
 * match the input's rank and fixed channel count, and a model whose input has a symbolic dim other than
 * the batch (axis 0) and an image's H, W needs inputShape. Null when the options fit.
 */
export function optionsModelMismatch(
  options: { inputShape?: readonly number[] | undefined },
  inputs: readonly ModelInputDims[],
): { field: 'inputShape'; message: string } | null {
  const input = inputs[0];
  if (!input) return null;
  const declared = input.dims;
  const shown = `[${declared.map((d) => (d === null ? '?' : d)).join(', ')}]`;
  const shape = options.inputShape;
  if (shape) {
    if (declared.length > 0 && declared.length !== shape.length) {
      return {
        field: 'inputShape',
        message: `inputShape [${shape.join(', ')}] has ${shape.length} dims but model input ${JSON.stringify(input.name)} is ${shown}; give ${declared.length} dims or leave inputShape out`,
      };
    }
    const channels = declared[1];
    if (typeof channels === 'number' && channels !== shape[1]) {
      return {
        field: 'inputShape',
        message: `inputShape [${shape.join(', ')}] gives ${shape[1]} channels but model input ${JSON.stringify(input.name)} is ${shown}; use ${channels} channels`,
      };
    }
    return null;
  }
  if (declared.length === 0) {
    return { field: 'inputShape', message: `model input ${JSON.stringify(input.name)} declares no shape; give options.inputShape [N, C, H, W]` };
  }
  const axis = declared.findIndex((d, k) => typeof d !== 'number' && !(k === 0 || (declared.length === 4 && k >= 2)));
  if (axis >= 0) {
    return {
      field: 'inputShape',
      message: `model input ${JSON.stringify(input.name)} is ${shown}, symbolic at axis ${axis}; give options.inputShape with every dim`,
    };
  }
  return null;
}
