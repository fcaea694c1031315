// Examples for openapi.yaml, one per operation and response. Each is typed by its zod schema (example()), so
// an example that drifts from the schema fails tsc, and test/openapi.test.ts parses every one with it.
import type { z } from 'zod';
import {
  CreateJobBodySchema,
  DatasetPageSchema,
  DatasetSchema,
  HealthSchema,
  JobCreatedSchema,
  JobPageSchema,
  JobSchema,
  ModelPageSchema,
  ModelSchema,
  ProblemSchema,
  ReadySchema,
  ReportSchema,
} from './schemas.js';

/** A zod schema's example typed by its input, so an example that drifts from the schema fails tsc. */
export function example<S extends z.ZodType>(_schema: S, value: z.input<S>): z.input<S> {
  return value;
}

const MODEL_ID = '0b6f3c1e-5d0a-4c57-9a52-3f1f2d9b8e41';
const DATASET_ID = '7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f';
const JOB_ID = '5e8f1a2b-3c4d-4e5f-9a6b-7c8d9e0f1a2b';

export const modelExample = example(ModelSchema, {
  id: MODEL_ID,
  name: 'resnet18.onnx',
  sha256: '9f2c4d0b7e8a1f3c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4',
  bytes: 46_827_520,
  opset: 17,
  inputs: [{ name: 'input', type: 'float32', dims: ['N', 3, 224, 224] }],
  outputs: [{ name: 'logits', type: 'float32', dims: ['N', 1000] }],
  params: 11_689_512,
  macs: 1_814_073_344,
  analysis: 'done',
  createdAt: '2026-11-29T12:00:00.000Z',
});

export const modelPageExample = example(ModelPageSchema, { items: [modelExample], nextCursor: null });

export const datasetExample = example(DatasetSchema, {
  id: DATASET_ID,
  name: 'calibration.npz',
  format: 'npz',
  sha256: '3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c49f2c4d0b7e8a',
  bytes: 1_572_992,
  info: { samples: 512, shape: [3, 32, 32], dtype: 'uint8', labels: true, classes: 10 },
  createdAt: '2026-11-29T12:01:00.000Z',
});

export const datasetPageExample = example(DatasetPageSchema, { items: [datasetExample], nextCursor: DATASET_ID });

export const createJobExample = example(CreateJobBodySchema, {
  modelId: MODEL_ID,
  datasetId: DATASET_ID,
  options: { rule: 'vbmf', finetune: { epochs: 1 } },
});

export const jobCreatedExample = example(JobCreatedSchema, { id: JOB_ID, status: 'queued' });

export const runningJobExample = example(JobSchema, {
  id: JOB_ID,
  status: 'running',
  stage: 'rewrite',
  progress: 0.41,
  percent: 41,
  stageProgress: { stage: 'rewrite', done: 12, total: 20, rate: 1.6, etaSeconds: 5 },
  modelId: MODEL_ID,
  datasetId: DATASET_ID,
  options: { rule: 'vbmf', finetune: { epochs: 1 } },
  attempts: 1,
  createdAt: '2026-11-29T12:02:00.000Z',
  startedAt: '2026-11-29T12:02:01.000Z',
  finishedAt: null,
  timings: null,
  metrics: null,
  error: null,
});

export const succeededJobExample = example(JobSchema, {
  ...runningJobExample,
  status: 'succeeded',
  stage: 'done',
  progress: 1,
  percent: 100,
  stageProgress: null,
  finishedAt: '2026-11-29T12:09:30.000Z',
  timings: { analyze: 0.8, plan: 2.1, rewrite: 11.4, finetune: 402.3, evaluate: 6.2, write: 0.4 },
  metrics: {
    paramsBefore: 11_689_512,
    paramsAfter: 3_021_144,
    paramsReduction: 3.87,
    macsBefore: 1_814_073_344,
    macsAfter: 441_802_752,
    macsReduction: 4.11,
    top1Original: 0.912,
    top1Finetuned: 0.909,
    latencyMsBefore: 21.4,
    latencyMsAfter: 9.8,
    latencyMsReduction: 2.18,
  },
});

export const canceledJobExample = example(JobSchema, {
  ...runningJobExample,
  status: 'canceled',
  stageProgress: null,
  finishedAt: '2026-11-29T12:03:00.000Z',
  error: { category: 'canceled', message: 'canceled by the client' },
});

export const jobPageExample = example(JobPageSchema, { items: [succeededJobExample], nextCursor: JOB_ID });

export const reportExample = example(ReportSchema, {
  jobId: JOB_ID,
  rule: 'vbmf',
  model: { sha256: modelExample.sha256, bytes: modelExample.bytes, opset: 17, inputShape: [1, 3, 224, 224], params: 11_689_512, macs: 1_814_073_344 },
  compressed: { bytes: 12_104_771, params: 3_021_144, macs: 441_802_752 },
  options: { rule: 'vbmf' },
  layers: [
    {
      name: 'layer1.0.conv1',
      op: 'Conv',
      kind: 'tucker2',
      ranks: [22, 19],
      reason: 'EVBMF ranks (22, 19) of (64, 64)',
      params: { before: 36_864, after: 7_042 },
      macs: { before: 115_605_504, after: 22_083_712 },
      relError: 0.31,
    },
  ],
  totals: {
    params: { before: 11_689_512, after: 3_021_144, ratio: 0.258 },
    macs: { before: 1_814_073_344, after: 441_802_752, ratio: 0.244 },
  },
  timings: { analyze: 0.8, plan: 2.1, rewrite: 11.4, write: 0.4 },
});

export const healthExample = example(HealthSchema, { status: 'ok' });
export const readyExample = example(ReadySchema, { status: 'ready', checks: { postgres: { ok: true, ms: 2 }, redis: { ok: true, ms: 1 } } });

/** An example problem+json per status, for responses that have no better one. */
export function problemExample(status: number): unknown {
  const samples: Record<number, [string, string, string]> = {
    400: ['bad-request', 'Bad request', 'invalid request body at /options/ratio: ratio must be ≤ 1'],
    401: ['unauthorized', 'Unauthorized', 'missing Authorization header; send "Authorization: Bearer <api key>"'],
    404: ['not-found', 'Not found', `job ${JOB_ID} does not exist for this API key's tenant`],
    409: ['conflict', 'Conflict', `job ${JOB_ID} is running and has no report yet; poll GET /v1/jobs/${JOB_ID} until it succeeds`],
    413: ['payload-too-large', 'Payload too large', 'the upload is larger than 512 MiB; upload a smaller file'],
    415: ['unsupported-media-type', 'Unsupported media type', 'send multipart/form-data with the .onnx model in the field "file"'],
    416: ['range-not-satisfiable', 'Range not satisfiable', 'the artifact has 12104771 bytes; ask for a range inside bytes=0-12104770'],
    422: ['dataset-shape-mismatch', 'Unprocessable content', 'the model takes 3-channel input but builtin:fashion-mnist has 1 channel; upload a 3-channel dataset'],
    429: ['too-many-requests', 'Too many requests', 'rate limit of 120 requests per minute exceeded; retry in 12 seconds'],
    503: ['service-unavailable', 'Service unavailable', 'the database is unavailable; retry in a few seconds'],
  };
  const [slug, title, detail] = samples[status] ?? ['internal', 'Internal server error', 'an unexpected error occurred; quote request id 8f1c… when reporting it'];
  const problem = example(ProblemSchema, { type: `https://tuckerize.dev/problems/${slug}`, title, status, detail, instance: `/v1/jobs/${JOB_ID}` });
  if (status === 400) problem.errors = [{ in: 'body', pointer: '/options/ratio', detail: 'ratio must be ≤ 1' }];
  return problem;
}
