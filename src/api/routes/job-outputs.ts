// What a job produces: its report, the compressed model (with ranges and presigned redirects) and its event
// stream. Registered beside routes/jobs.ts under the same /v1/jobs/:id paths.
import type { Job } from '@prisma/client';
import type { PrismaClient } from '../../db/client.js';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { principalOf } from '../auth.js';
import type { AppContext } from '../context.js';
import { ConflictError, NotFoundError, RangeNotSatisfiableError } from '../errors.js';
import { reportExample } from '../examples.js';
import { streamJobEvents } from '../job-events.js';
import { IdParamsSchema, JobEventSchema, ReportSchema, type ApiReport } from '../schemas.js';
import { parseRange } from '../../store/ranges.js';
import { AUTH, ConditionalHeadersSchema, jsonEtag, noneMatch, NOT_MODIFIED, notModified, problems } from './common.js';

const ArtifactHeadersSchema = ConditionalHeadersSchema.extend({
  range: z.string().optional().describe('one byte range, `bytes=first-last`, `bytes=first-` or `bytes=-suffix`: answers 206'),
  'if-range': z.string().optional().describe('the ETag of a partial download: the Range is honoured only while it is current'),
});

/** The job `id` of this tenant; a 404 for another tenant's job as for one that does not exist. */
export async function findTenantJob(prisma: PrismaClient, tenantId: string, id: string): Promise<Job> {
  const job = await prisma.job.findFirst({ where: { id, tenantId } });
  if (!job) throw new NotFoundError(`job ${id} does not exist for this API key's tenant`);
  return job;
}

export const jobOutputRoutes: FastifyPluginAsyncZod<{ ctx: AppContext }> = async (app, { ctx }) => {
  const { prisma, store, events } = ctx;
  const findJob = (tenantId: string, id: string) => findTenantJob(prisma, tenantId, id);
  const openStreams = new Set<() => void>();
  // preClose, not onClose: the server waits for open connections before onClose runs, and an SSE stream
  // stays open until the job ends.
  app.addHook('preClose', async () => {
    for (const end of [...openStreams]) end();
  });

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
  );};
