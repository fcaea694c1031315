// The engine's report of a succeeded job (GET /v1/jobs/{id}/report).
import { z } from 'zod';
import { int32, int64 } from './common.js';

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

export type ApiReport = z.input<typeof ReportSchema>;
