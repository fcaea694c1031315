// Compression jobs: create (DB row first, then enqueue), list, inspect, follow (SSE), cancel, download.
import type { Job } from '@prisma/client';
import { isTerminal } from '../../jobs/state.js';
import { jobView } from '../../jobs/view.js';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { publishCancel } from '../../queue/index.js';
import { principalOf } from '../auth.js';
import type { AppContext } from '../context.js';
import { streamJobEvents } from '../job-events.js';
import { admitJob, type EstimateInput } from '../job-limits.js';
import { optionsModelMismatch } from '../../contract/job-options.js';
import { ApiError, ConflictError, NotFoundError, RangeNotSatisfiableError } from '../errors.js';
import type { TensorInfo } from '../onnx.js';
import { checkDatasetFitsModel, type DatasetInspection } from '../../security/index.js';
import { parseRange } from '../../store/ranges.js';
import {
  BUILTIN_DATASETS,
  CreateJobBodySchema,
  IdParamsSchema,
  JobCreatedSchema,
  JobListQuerySchema,
  JobPageSchema,
  JobEventSchema,
  JobSchema,
  ReportSchema,
  type ApiReport,
} from '../schemas.js';
import {
  canceledJobExample,
  createJobExample,
  jobCreatedExample,
  jobPageExample,
  reportExample,
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
  noneMatch,
  NOT_MODIFIED,
  notModified,
  problems,
  sha256Hex,
} from './common.js';

export { jobView };

/** builtin:fashion-mnist as the engine loads it: 60,000 labelled 1×28×28 uint8 images of 10 classes. */
const FASHION_MNIST: DatasetInspection = {
  format: 'npz',
  info: { count: 60_000, shape: [60_000, 1, 28, 28], dtype: 'uint8', labelled: true, classes: 10 },
};

/** How long POST /v1/jobs waits for Redis before leaving the row for the reconciler. */
const ENQUEUE_TIMEOUT_MS = 3000;

const ArtifactHeadersSchema = ConditionalHeadersSchema.extend({
  range: z.string().optional().describe('one byte range, `bytes=first-last`, `bytes=first-` or `bytes=-suffix`: answers 206'),
  'if-range': z.string().optional().describe('the ETag of a partial download: the Range is honoured only while it is current'),
});

const IdempotencyHeadersSchema = z.object({
  'idempotency-key': z
    .string()
    .min(1)
    .max(200)
    .regex(/^[\x21-\x7e]+$/, 'Idempotency-Key must be 1..200 printable ASCII characters without spaces')
    .optional(),
});

export const jobRoutes: FastifyPluginAsyncZod<{ ctx: AppContext }> = async (app, { ctx }) => {
  const { prisma, queue, store, redis, events, jobs } = ctx;
  const openStreams = new Set<() => void>();
  // preClose, not onClose: the server waits for open connections before onClose runs, and an SSE stream
  // stays open until the job ends.
  app.addHook('preClose', async () => {
    for (const end of [...openStreams]) end();
  });

  async function findJob(tenantId: string, id: string): Promise<Job> {
    const job = await prisma.job.findFirst({ where: { id, tenantId } });
    if (!job) throw new NotFoundError(`job ${id} does not exist for this API key's tenant`);
    return job;
  }

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

  app.get(
    '/v1/jobs/:id/report',
    {
      schema: {
        operationId: 'getJobReport',
        summary: "The engine's report (per-layer plan, totals, accuracy, timings)",
        description: 'Immutable once the job has succeeded: its ETag never changes, so a cached copy revalidates with 304.',
        tags: ['jobs'],
        security: AUTH,
        params: IdParamsSchema,
        headers: ConditionalHeadersSchema,
        response: { 200: ReportSchema, ...NOT_MODIFIED, ...problems(400, 401, 404, 409, 429, 503) },
        docs: { headers: { 200: ['ETag'], 304: ['ETag'] }, examples: { 200: reportExample } },
      },
    },
    async (request, reply) => {
      const job = await findJob(principalOf(request).tenantId, request.params.id);
      if (job.report === null || typeof job.report !== 'object') {
        throw new ConflictError(`job ${job.id} is ${job.status} and has no report yet; poll GET /v1/jobs/${job.id} until it succeeds`);
      }
      reply.header('cache-control', 'private, max-age=0, must-revalidate');
      if (notModified(request, reply, jsonEtag(job.report))) return reply;
      return job.report as ApiReport;
    },
  );

  app.get(
    '/v1/jobs/:id/artifact',
    {
      schema: {
        operationId: 'getJobArtifact',
        summary: 'Download the compressed model (.onnx)',
        description:
          'Streamed. Headers: Content-Length, ETag (the sha256), X-Content-SHA256 (hex), Digest (sha-256, base64). ' +
          'If-None-Match with the ETag answers 304. One byte range (`Range: bytes=a-b`, optionally with If-Range) ' +
          'answers 206. Where the server stores artifacts in S3 with presigned downloads on, the answer is a 302 to ' +
          'a short-lived URL of the object store.',
        tags: ['jobs'],
        security: AUTH,
        params: IdParamsSchema,
        headers: ArtifactHeadersSchema,
        produces: ['application/octet-stream'],
        response: {
          200: {
            description: 'the compressed model',
            content: { 'application/octet-stream': { schema: z.any().meta({ type: 'string', format: 'binary' }) } },
          },
          206: {
            description: 'the requested byte range of the compressed model (Content-Range says which)',
            content: { 'application/octet-stream': { schema: z.any().meta({ type: 'string', format: 'binary' }) } },
          },
          302: z.undefined().describe('download it from the short-lived URL in Location (object store)'),
          304: z.undefined().describe('not modified (If-None-Match matched)'),
          ...problems(400, 401, 404, 409, 416, 429, 503),
        },
        docs: {
          headers: {
            200: ['ETag', 'X-Content-SHA256', 'Digest', 'Content-Disposition', 'Accept-Ranges'],
            206: ['ETag', 'X-Content-SHA256', 'Digest', 'Content-Disposition', 'Accept-Ranges', 'Content-Range'],
            302: ['Location'],
            304: ['ETag'],
            416: ['Content-Range'],
          },
        },
      },
    },
    async (request, reply) => {
      const job = await findJob(principalOf(request).tenantId, request.params.id);
      if (job.status !== 'succeeded') {
        throw new ConflictError(`job ${job.id} is ${job.status}; its artifact can be downloaded once it has succeeded`);
      }
      const artifact = await prisma.artifact.findUnique({ where: { jobId: job.id } });
      if (!artifact) throw new ConflictError(`job ${job.id} succeeded but has no stored artifact; create the job again`);
      const model = await prisma.onnxModel.findUnique({ where: { id: job.modelId }, select: { name: true } });
      const stem = (model?.name ?? 'model').replace(/\.onnx$/i, '').replace(/[^A-Za-z0-9._-]/g, '_');
      const etag = `"${artifact.sha256}"`;
      reply
        .header('etag', etag)
        .header('x-content-sha256', artifact.sha256)
        .header('digest', `sha-256=${Buffer.from(artifact.sha256, 'hex').toString('base64')}`)
        .header('cache-control', 'private, max-age=0, must-revalidate');
      if (noneMatch(request.headers['if-none-match'], etag)) return reply.code(304).send();
      const fileName = `${stem}.compressed.onnx`;
      const presigned = await store.downloadUrl(artifact.storageKey, fileName);
      if (presigned) return reply.code(302).header('location', presigned).send();
      const size = Number(artifact.bytes);
      const ifRange = request.headers['if-range'];
      const wanted = parseRange(request.headers.range, typeof ifRange === 'string' ? ifRange : undefined, size, etag);
      if (wanted.kind === 'unsatisfiable') {
        reply.header('content-range', `bytes */${size}`);
        throw new RangeNotSatisfiableError(`the artifact has ${size} bytes; ask for a range inside bytes=0-${size - 1}`);
      }
      reply
        .type('application/octet-stream')
        .header('accept-ranges', 'bytes')
        .header('content-disposition', `attachment; filename="${fileName}"`);
      if (wanted.kind === 'partial') {
        const { start, end } = wanted.range;
        return reply
          .code(206)
          .header('content-range', `bytes ${start}-${end}/${size}`)
          .header('content-length', String(end - start + 1))
          .send(await store.openRead(artifact.storageKey, wanted.range));
      }
      return reply.header('content-length', String(size)).send(await store.openRead(artifact.storageKey));
    },
  );

  app.get(
    '/v1/jobs/:id/events',
    {
      schema: {
        operationId: 'getJobEvents',
        summary: 'Follow a job with Server-Sent Events',
        description:
          '`event: status` (the job as in GET /v1/jobs/:id) on connect and on every change; `event: progress` ' +
          '({stage, done, total, percent, rate, etaSeconds, message?}) while it runs. Each event is documented as the ' +
          'JobEvent schema: `event` is the SSE event name and `data` its JSON. The stream ends after the terminal status ' +
          '(succeeded, failed or canceled). A tenant may hold a limited number of open streams per API process ' +
          '(SSE_MAX_STREAMS_PER_TENANT, default 50); past it the answer is 429 with Retry-After.',
        tags: ['jobs'],
        security: AUTH,
        params: IdParamsSchema,
        produces: ['text/event-stream'],
        response: {
          200: { description: 'an event stream of JobEvent', content: { 'text/event-stream': { schema: JobEventSchema } } },
          ...problems(400, 401, 404, 429, 503),
        },
      },
    },
    async (request, reply) =>
      streamJobEvents(request, reply, { hub: events, prisma, tenantId: principalOf(request).tenantId, jobId: request.params.id, openStreams }),
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
