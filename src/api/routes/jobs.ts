// Compression jobs: create (DB row first, then enqueue), list, inspect, cancel. What a job produces (report,
// artifact, events) is served by routes/job-outputs.ts.
import type { Job } from '@prisma/client';
import { isTerminal } from '../../jobs/state.js';
import { jobView } from '../../jobs/view.js';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { publishCancel } from '../../queue/index.js';
import { principalOf } from '../auth.js';
import type { AppContext } from '../context.js';
import { admitJob, type EstimateInput } from '../job-limits.js';
import { optionsModelMismatch } from '../../contract/job-options.js';
import { ApiError, ConflictError, NotFoundError } from '../errors.js';
import type { TensorInfo } from '../onnx.js';
import { checkDatasetFitsModel, type DatasetInspection } from '../../security/index.js';
import {
  BUILTIN_DATASETS,
  CreateJobBodySchema,
  IdParamsSchema,
  JobCreatedSchema,
  JobListQuerySchema,
  JobPageSchema,
  JobSchema,
} from '../schemas.js';
import {
  canceledJobExample,
  createJobExample,
  jobCreatedExample,
  jobPageExample,
  runningJobExample,
} from '../examples.js';
import { currentStageProgress } from '../progress-rate.js';
import {
  AUTH,
  canonicalJson,
  ConditionalHeadersSchema,
  isUniqueViolation,
  jsonEtag,
  listPage,
  NOT_MODIFIED,
  notModified,
  problems,
  sha256Hex,
} from './common.js';
import { findTenantJob } from './job-outputs.js';

export { jobView };

/** builtin:fashion-mnist as the engine loads it: 60,000 labelled 1×28×28 uint8 images of 10 classes. */
const FASHION_MNIST: DatasetInspection = {
  format: 'npz',
  info: { count: 60_000, shape: [60_000, 1, 28, 28], dtype: 'uint8', labelled: true, classes: 10 },
};

/** How long POST /v1/jobs waits for Redis before leaving the row for the reconciler. */
const ENQUEUE_TIMEOUT_MS = 3000;

const IdempotencyHeadersSchema = z.object({
  'idempotency-key': z
    .string()
    .min(1)
    .max(200)
    .regex(/^[\x21-\x7e]+$/, 'Idempotency-Key must be 1..200 printable ASCII characters without spaces')
    .optional(),
});

export const jobRoutes: FastifyPluginAsyncZod<{ ctx: AppContext }> = async (app, { ctx }) => {
  const { prisma, queue, redis, jobs } = ctx;
  const findJob = (tenantId: string, id: string) => findTenantJob(prisma, tenantId, id);

  app.post(
    '/v1/jobs',
    {
      schema: {
        operationId: 'createJob',
        summary: 'Create a compression job',
        description:
          'Queues a compression of an uploaded model. With an `Idempotency-Key` header, repeating the same request ' +
          'returns the same job (with Idempotent-Replayed: true); reusing the key with a different body is a 409. ' +
          'A dataset whose images do not fit the model input (channels, size) is a 422 here, not a failed job later; ' +
          'so are options the engine would refuse (type `invalid-job-options`, each option named by an RFC 6901 ' +
          'pointer under `/options`). A malformed body (missing modelId, unknown top-level field) is a 400.',
        tags: ['jobs'],
        security: AUTH,
        headers: IdempotencyHeadersSchema,
        body: CreateJobBodySchema,
        response: { 202: JobCreatedSchema, ...problems(400, 401, 404, 409, 413, 415, 422, 429, 503) },
        docs: {
          headers: { 202: ['Location', 'Idempotent-Replayed'] },
          examples: { request: createJobExample, 202: jobCreatedExample },
        },
      },
    },
    async (request, reply) => {
      const { tenantId } = principalOf(request);
      const body = request.body;
      const idempotencyKey = request.headers['idempotency-key'];
      const requestHash = sha256Hex(canonicalJson(body));

      const replay = async (): Promise<boolean> => {
        if (!idempotencyKey) return false;
        const previous = await prisma.job.findUnique({ where: { tenantId_idempotencyKey: { tenantId, idempotencyKey } } });
        if (!previous) return false;
        if (previous.requestHash !== requestHash) {
          throw new ConflictError(`Idempotency-Key ${JSON.stringify(idempotencyKey)} was already used with a different request body; use a new key for a new job`);
        }
        await reply.code(202).header('location', `/v1/jobs/${previous.id}`).header('idempotent-replayed', 'true').send({ id: previous.id, status: previous.status });
        return true;
      };
      if (await replay()) return reply;

      const model = await prisma.onnxModel.findFirst({ where: { id: body.modelId, tenantId } });
      if (!model) throw new NotFoundError(`model ${body.modelId} does not exist for this API key's tenant; upload it with POST /v1/models`);
      const mismatch = optionsModelMismatch(body.options, model.inputs as unknown as TensorInfo[]);
      if (mismatch) {
        throw new ApiError(422, 'unprocessable', 'Unprocessable content', mismatch.message, [
          { in: 'body', pointer: `/options/${mismatch.field}`, detail: mismatch.message },
        ]);
      }
      let datasetId: string | null = null;
      let builtinDataset: string | null = null;
      let estimated: EstimateInput['dataset'] = null;
      if (body.datasetId !== undefined) {
        if ((BUILTIN_DATASETS as readonly string[]).includes(body.datasetId)) {
          // The built-in set is checked like an upload: a 3-channel model cannot take 1-channel 28×28 images.
          checkDatasetFitsModel(
            FASHION_MNIST,
            (model.inputs as unknown as TensorInfo[]).map((t) => ({ name: t.name, elemType: t.elemType, dims: t.dims })),
          );
          builtinDataset = body.datasetId;
          estimated = 'builtin';
        } else {
          const dataset = await prisma.dataset.findFirst({ where: { id: body.datasetId, tenantId } });
          if (!dataset) throw new NotFoundError(`dataset ${body.datasetId} does not exist for this API key's tenant; upload it with POST /v1/datasets`);
          checkDatasetFitsModel(
            { format: dataset.format, info: dataset.info } as unknown as DatasetInspection,
            (model.inputs as unknown as TensorInfo[]).map((t) => ({ name: t.name, elemType: t.elemType, dims: t.dims })),
          );
          datasetId = dataset.id;
          estimated = dataset;
        }
      }
      if (body.options.maxAccuracyDrop !== undefined) {
        // Accuracy-target mode measures top-1 on the dataset's held-out split: it needs labels.
        const labelled = estimated === 'builtin' || (estimated !== null && (estimated.info as { labelled?: boolean }).labelled === true);
        if (!labelled) {
          const message = estimated === null
            ? 'options.maxAccuracyDrop measures top-1 on a held-out split: give datasetId (a labelled dataset or builtin:fashion-mnist)'
            : `options.maxAccuracyDrop measures top-1 on a held-out split, but dataset ${body.datasetId} has no labels; upload a labelled dataset or drop maxAccuracyDrop`;
          throw new ApiError(422, 'unprocessable', 'Unprocessable content', message, [
            { in: 'body', pointer: estimated === null ? '/datasetId' : '/options/maxAccuracyDrop', detail: message },
          ]);
        }
      }
      const estimate = await admitJob(prisma, ctx.config, tenantId, { model, dataset: estimated, options: body.options });

      let job: Job;
      try {
        job = await jobs.create({
          tenantId,
          modelId: model.id,
          datasetId,
          builtinDataset,
          options: body.options as object,
          idempotencyKey: idempotencyKey ?? null,
          requestHash,
          estimatedComputeSeconds: estimate.computeSeconds,
        });
      } catch (err) {
        // A concurrent request with the same Idempotency-Key won the insert.
        if (isUniqueViolation(err) && (await replay())) return reply;
        throw err;
      }
      try {
        await withTimeout(ctx.dispatcher.enqueue({ jobId: job.id, tenantId }), ENQUEUE_TIMEOUT_MS);
      } catch (err) {
        // The row is the truth: requeueOrphans (worker startup) enqueues queued rows missing from Redis.
        request.log.warn({ jobId: job.id, err: (err as Error).message }, 'enqueue failed; the reconciler will enqueue the job');
      }
      request.log.info({ jobId: job.id, modelId: model.id, estimate }, 'job created');
      return reply.code(202).header('location', `/v1/jobs/${job.id}`).send({ id: job.id, status: job.status });
    },
  );

  app.get(
    '/v1/jobs',
    {
      schema: {
        operationId: 'listJobs',
        summary: "List this tenant's jobs, newest first",
        description: 'With `status`, only jobs in that status; the cursor stays valid when its job has changed status since.',
        tags: ['jobs'],
        security: AUTH,
        querystring: JobListQuerySchema,
        response: { 200: JobPageSchema, ...problems(400, 401, 429, 503) },
        docs: { examples: { 200: jobPageExample } },
      },
    },
    async (request) => {
      const { tenantId } = principalOf(request);
      const { limit, cursor, status } = request.query;
      return listPage(
        'job',
        { limit, cursor },
        (id) => prisma.job.findFirst({ where: { id, tenantId }, select: { id: true, createdAt: true } }),
        ({ where, ...args }) => prisma.job.findMany({ where: { tenantId, ...(status ? { status } : {}), ...where }, ...args }),
        jobView,
      );
    },
  );

  app.get(
    '/v1/jobs/:id',
    {
      schema: {
        operationId: 'getJob',
        summary: 'Get a job: status, stage, progress with rate and ETA, timings, metrics, error',
        description: 'The ETag changes with status, stage and progress: poll with If-None-Match to get 304 while nothing moved.',
        tags: ['jobs'],
        security: AUTH,
        params: IdParamsSchema,
        headers: ConditionalHeadersSchema,
        response: { 200: JobSchema, ...NOT_MODIFIED, ...problems(400, 401, 404, 429, 503) },
        docs: { headers: { 200: ['ETag'], 304: ['ETag'] }, examples: { 200: runningJobExample } },
      },
    },
    async (request, reply) => {
      const job = await findJob(principalOf(request).tenantId, request.params.id);
      const view = jobView(job);
      const stageProgress = job.status === 'running' ? await currentStageProgress(prisma, job.id) : null;
      const full = { ...view, stageProgress };
      if (notModified(request, reply, jsonEtag(full))) return reply;
      return full;
    },
  );

  app.post(
    '/v1/jobs/:id/cancel',
    {
      schema: {
        operationId: 'cancelJob',
        summary: 'Cancel a queued or running job',
        description:
          'A queued job is removed from the queue; a running job is stopped by its worker (its engine process group is killed). ' +
          'Idempotent: canceling a canceled job answers 200 with the job again. A job that already succeeded or failed is a 409. ' +
          'No body is needed (an empty one with Content-Type: application/json is accepted).',
        tags: ['jobs'],
        security: AUTH,
        params: IdParamsSchema,
        response: { 200: JobSchema, ...problems(400, 401, 404, 409, 429, 503) },
        docs: { examples: { 200: canceledJobExample } },
      },
    },
    async (request) => {
      const { tenantId } = principalOf(request);
      const job = await findJob(tenantId, request.params.id);
      const settle = (current: Job) => {
        if (current.status === 'canceled') return jobView(current);
        throw new ConflictError(`job ${job.id} already ${current.status}; only queued or running jobs can be canceled`);
      };
      if (isTerminal(job.status)) return settle(job);
      const canceled = await jobs.cancel(job.id, { tenantId });
      if (!canceled) return settle(await findJob(tenantId, job.id));
      if (canceled.from === 'queued') {
        try {
          await (await queue.getJob(job.id))?.remove();
        } catch (err) {
          // Already picked up (locked by a worker): the worker re-reads the row and sees `canceled`.
          request.log.info({ jobId: job.id, err: (err as Error).message }, 'queued job could not be removed; the worker will skip it');
        }
      }
      try {
        await publishCancel(redis, ctx.config.queuePrefix, job.id);
      } catch (err) {
        request.log.warn({ jobId: job.id, err: (err as Error).message }, 'cancel notification not published; the worker will see the DB state');
      }
      request.log.info({ jobId: job.id, from: canceled.from }, 'job canceled');
      return jobView(canceled.job);
    },
  );
};

async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
