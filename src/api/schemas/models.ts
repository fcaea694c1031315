// Uploaded models and datasets.
import { z } from 'zod';
import { NEXT_CURSOR, int32, int64 } from './common.js';

export const BUILTIN_DATASETS = ['builtin:fashion-mnist'] as const;

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
