// The API as a Fastify factory: buildApp(config) returns a ready-to-listen instance without listening, so tests
// drive it with supertest against the real PostgreSQL and Redis. server.ts only wires config, listen and signals.
import { randomUUID } from 'node:crypto';
import helmet from '@fastify/helmet';
import multipart from '@fastify/multipart';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { Queue } from 'bullmq';
import Fastify, { type FastifyInstance } from 'fastify';
import {
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import { Redis } from 'ioredis';
import type { Config } from '../config.js';
import { createPrisma, type PrismaClient } from '../db/client.js';
import { isTerminal, JobStates } from '../jobs/state.js';
import { createServiceMetrics, instrumentHttp, type ServiceMetrics } from '../ops/metrics.js';
import { FairDispatcher } from '../queue/fair.js';
import { createAnalysisQueue, createCompressionQueue, type CompressionJobData } from '../queue/index.js';
import { createStore, type ArtifactStore } from '../store/index.js';
import { Authenticator } from './auth.js';
import type { AppContext } from './context.js';
import { registerErrorHandlers } from './errors.js';
import { addRateLimits, clientErrorHandler, frameworkErrors, redactUrl } from './http-limits.js';
import { JobEventHub } from './job-events.js';
import { documentHeader, documentObject, documentRoute } from './openapi.js';
import { ModelAnalyzer } from './model-analysis.js';
import { datasetRoutes } from './routes/datasets.js';
import { jobOutputRoutes } from './routes/job-outputs.js';
import { jobRoutes } from './routes/jobs.js';
import { reportPageRoutes } from './routes/report-page.js';
import { modelRoutes } from './routes/models.js';
import { registerAdmin } from './routes/admin.js';
import { opsRoutes } from './routes/ops.js';
import { problemRoutes } from './routes/problems.js';
import { statsRoutes } from './routes/stats.js';
import { webhookRoutes } from './routes/webhooks.js';
import { createWebhookQueue, webhookTerminalHook } from '../webhooks/deliveries.js';

/** Local store files unused this long are removed (they are in the object store, or were never finished). */
const STORE_TEMP_MAX_AGE_MS = 60 * 60 * 1000;
const STORE_CLEANUP_EVERY_MS = 10 * 60 * 1000;

export const API_VERSION = '1.0.0';

/** Everything buildApp would otherwise create. Passed-in resources belong to the caller and are not closed. */
export interface AppDeps {
  prisma?: PrismaClient;
  redis?: Redis;
  queue?: Queue<CompressionJobData>;
  store?: ArtifactStore;
  metrics?: ServiceMetrics;
  /** where the log goes (default stdout): tests read it to check what is and is not logged */
  logStream?: { write(line: string): void };
  /** queue the engine analysis (params/MACs, run by a worker) after each model upload (default true) */
  analyzeModels?: boolean;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export async function buildApp(config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: {
      level: config.logLevel,
      redact: ['req.headers.authorization', 'req.headers["x-admin-key"]'],
      ...(deps.logStream ? { stream: deps.logStream } : {}),
      // Credentials sent as query parameters (?api_key=…) never reach the log.
      serializers: {
        req: (req: { method: string; url: string; ip?: string; socket?: { remoteAddress?: string } }) => ({
          method: req.method,
          url: redactUrl(req.url),
          remoteAddress: req.ip ?? req.socket?.remoteAddress,
        }),
      },
    },
    // Slow clients: headers must arrive within HTTP_HEADERS_TIMEOUT_MS, the whole request within
    // HTTP_REQUEST_TIMEOUT_MS (Node checks once a second); clientErrorHandler answers 408/431/400 as problem+json.
    requestTimeout: config.httpRequestTimeoutMs,
    http: {
      headersTimeout: Math.min(config.httpHeadersTimeoutMs, config.httpRequestTimeoutMs),
      requestTimeout: config.httpRequestTimeoutMs,
      connectionsCheckingInterval: 1000,
    },
    clientErrorHandler,
    frameworkErrors,
    // A caller's x-request-id is kept when it is sane, so a request can be followed across services.
    genReqId: (req) => {
      const incoming = req.headers['x-request-id'];
      return typeof incoming === 'string' && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    },
    bodyLimit: 1024 * 1024,
    trustProxy: false,
  }).withTypeProvider<ZodTypeProvider>();

  // JSON is the only body type besides the multipart uploads; text/plain would reach validation as a string.
  app.removeContentTypeParser('text/plain');
  // Routes that need no body (POST /v1/jobs/:id/cancel) accept an empty one sent as application/json.
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) =>
    body.length === 0 ? done(null, undefined) : parseJson(request, body.toString(), done),
  );
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  registerErrorHandlers(app);
  app.decorate('uploadIdleTimeoutMs', config.uploadIdleTimeoutMs);

  const owned: Array<() => Promise<unknown>> = [];
  const prisma = deps.prisma ?? createPrisma(config.databaseUrl);
  if (!deps.prisma) owned.push(() => prisma.$disconnect());
  // Fail fast instead of queueing commands forever while Redis is down: readiness and rate limits must answer.
  const redis = deps.redis ?? new Redis(config.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000 });
  if (!deps.redis) {
    redis.on('error', (err) => app.log.warn({ err: err.message }, 'redis connection error'));
    owned.push(() => redis.quit().catch(() => redis.disconnect()));
  }
  const queue = deps.queue ?? createCompressionQueue({ url: config.redisUrl, maxRetriesPerRequest: 1, connectTimeout: 2000 }, config.queuePrefix);
  if (!deps.queue) {
    queue.on('error', (err) => app.log.warn({ err: err.message }, 'queue connection error'));
    owned.push(() => queue.close());
  }
  const events = new JobEventHub(config.redisUrl, config.queuePrefix, config.sseMaxStreamsPerTenant, (err) =>
    app.log.warn({ err: err.message }, 'job events subscription error'),
  );
  let analyzer: ModelAnalyzer | null = null;
  if (deps.analyzeModels !== false) {
    const analysisQueue = createAnalysisQueue({ url: config.redisUrl, maxRetriesPerRequest: 1, connectTimeout: 2000 }, config.queuePrefix);
    analysisQueue.on('error', (err) => app.log.warn({ err: err.message }, 'analysis queue connection error'));
    owned.push(() => analysisQueue.close());
    analyzer = new ModelAnalyzer(analysisQueue, app.log);
  }
  const metrics =
    deps.metrics ??
    createServiceMetrics({
      prisma,
      queue,
      processMetrics: true,
      onCollectError: (source, err) => app.log.warn({ source, err: (err as Error).message }, 'metrics collection failed'),
    });
  const jobs = new JobStates({
    prisma,
    publisher: redis,
    prefix: config.queuePrefix,
    onPublishError: (err, message) => app.log.warn({ jobId: message.jobId, err: err.message }, 'job event not published; followers see the DB state'),
  });
  // A cancel is a terminal transition made here: its webhook deliveries are enqueued from the API.
  const webhookQueue = createWebhookQueue({ url: config.redisUrl, maxRetriesPerRequest: 1, connectTimeout: 2000 }, config.queuePrefix, config.webhooks);
  webhookQueue.on('error', (err) => app.log.warn({ err: err.message }, 'webhook queue connection error'));
  owned.push(() => webhookQueue.close());
  jobs.onTerminal(webhookTerminalHook(webhookQueue, app.log));
  // A tenant's held jobs move up when one of its jobs ends (any process's transition, via the job-events
  // channel), and after a Redis reconnect or this process's start, when such an event may have been missed.
  const dispatcher = new FairDispatcher(queue, redis, prisma, config.queuePrefix, config.tenantMaxRunningJobs);
  const logRelease = (err: Error) => app.log.warn({ err: err.message }, 'releasing held jobs failed; their delay is the backstop');
  events.subscribeAll((event) => {
    if (event.kind === 'resync') void dispatcher.releaseAll().catch(logRelease);
    else if (event.message.type === 'status' && isTerminal(event.message.status)) {
      void dispatcher.release(event.message.tenantId).catch(logRelease);
    }
  });
  const ctx: AppContext = {
    config,
    prisma,
    redis,
    queue,
    store: deps.store ?? (await createStore(config)),
    events,
    dispatcher,
    jobs,
    analyzer,
  };

  instrumentHttp(app, metrics);
  // Temp files of interrupted uploads and, with the S3 store, the local copies kept for inspection.
  const storeCleanup = setInterval(() => {
    ctx.store.cleanupTemp(STORE_TEMP_MAX_AGE_MS).catch((err: unknown) => app.log.warn({ err: (err as Error).message }, 'store cleanup failed'));
  }, STORE_CLEANUP_EVERY_MS);
  storeCleanup.unref();
  owned.push(async () => clearInterval(storeCleanup));
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id);
  });
  app.addHook('onClose', async () => {
    await events.close();
    // Close in reverse order of creation; one failure must not leave the others open.
    const results = await Promise.allSettled(owned.reverse().map((close) => close()));
    for (const r of results) if (r.status === 'rejected') app.log.warn({ err: String(r.reason) }, 'close failed');
  });

  await app.register(helmet, {
    contentSecurityPolicy: {
      directives: {
        defaultSrc: ["'self'"],
        // the docs UI loads its own bundled scripts/styles and inline init
        scriptSrc: ["'self'", "'unsafe-inline'"],
        styleSrc: ["'self'", "'unsafe-inline'"],
        imgSrc: ["'self'", 'data:'],
      },
    },
  });
  // The limits themselves are added below with createRateLimit (per address before auth, per key after).
  await app.register(rateLimit, {
    global: false,
    redis,
    nameSpace: `${config.queuePrefix}:ratelimit:`,
    skipOnError: true,
  });
  const auth = new Authenticator(prisma, config.authCacheTtlMs);
  const limitPerKey = addRateLimits(app, auth, {
    perKeyPerMinute: config.rateLimitPerMinute,
    unauthenticatedPerMinute: config.rateLimitUnauthenticatedPerMinute,
  });
  await app.register(multipart, {
    limits: {
      fileSize: Math.max(config.maxModelBytes, config.maxDatasetBytes),
      files: 1,
      fields: 4,
      parts: 5,
      fieldSize: 1024,
      headerPairs: 100,
    },
  });
  await app.register(swagger, {
    openapi: documentHeader(API_VERSION),
    transform: documentRoute,
    transformObject: documentObject,
  });
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: false });

  app.decorateRequest('principal', null);
  await app.register(opsRoutes, { ctx, metrics: metrics.registry });
  await app.register(problemRoutes);
  if (config.adminKey) await registerAdmin(app, ctx, config.adminKey);
  await app.register(async (v1) => {
    v1.addHook('onRequest', async (request, reply) => {
      request.principal = await auth.authenticate(request.headers.authorization);
      await limitPerKey(request, reply);
    });
    await v1.register(modelRoutes, { ctx });
    await v1.register(datasetRoutes, { ctx });
    await v1.register(jobRoutes, { ctx });
    await v1.register(jobOutputRoutes, { ctx });
    await v1.register(reportPageRoutes, { ctx });
    await v1.register(statsRoutes, { ctx });
    await v1.register(webhookRoutes, { ctx });
  });

  await app.ready();
  void dispatcher.releaseAll().catch(logRelease);
  return app;
}
