// Builds a BullMQ worker for compression jobs with everything it needs (Prisma, store, cancel bus).
// src/worker.ts wraps it with signals; tests start it in-process against the real Postgres and Redis.
import { randomBytes } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { pino, type Logger } from 'pino';
import type { Config } from '../config.js';
import { createPrisma, type PrismaClient } from '../db/client.js';
import { migrate } from '../db/migrate.js';
import { ACTIVE_STATUSES, JobStates } from '../jobs/state.js';
import { CancelBus } from '../queue/cancel.js';
import { requeueOrphans, requeuePendingAnalyses } from '../db/reconcile.js';
import {
  ANALYSIS_QUEUE, COMPRESSION_QUEUE, createAnalysisQueue, createCompressionQueue, type AnalysisJobData, type CompressionJobData,
} from '../queue/index.js';
import { createStore } from '../store/index.js';
import { createWebhookQueue, startDeliveryWorker, webhookTerminalHook } from '../webhooks/deliveries.js';
import { createAnalysisProcessor, type ModelTotals } from './analysis.js';
import { createJobProcessor, markFailedIfUnfinished, type JobOutcome, type MeasureFn, type ProcessorDeps } from './jobs.js';

export interface StartWorkerOptions {
  logger?: Logger;
  /** Overrides verify.ts's verifyAndMeasure; null skips measurement. */
  measure?: MeasureFn | null;
  measureRuns?: number;
  onEngineStarted?: ProcessorDeps['onEngineStarted'];
  cancelPollMs?: number;
  /** Period of the requeue of job rows missing from Redis (after a Redis restart). */
  reconcileEveryMs?: number;
  /** BullMQ lock/stall settings; tests shorten them to see stall recovery quickly. */
  lockDurationMs?: number;
  stalledIntervalMs?: number;
}

export interface RunningWorker {
  workerId: string;
  worker: Worker<CompressionJobData, JobOutcome>;
  prisma: PrismaClient;
  /** the worker's job state machine (register terminal hooks here) */
  jobs: JobStates;
  /** Stops taking jobs, lets running ones finish, then closes every connection. */
  close(): Promise<void>;
}

/**
 * Rows younger than this may still be in the middle of their API request's enqueue; leave them to it.
 * (A second enqueue would be harmless, BullMQ dedupes by job id, but it would log a needless requeue.)
 */
const ORPHAN_MIN_AGE_MS = 10_000;
/** Redis here keeps nothing on disk: after a restart the queue is empty but the rows are not. */
const RECONCILE_EVERY_MS = 5 * 60 * 1000;

/** Temp files older than this in the store's tmp dir are from crashed uploads or ingests. */
const TEMP_MAX_AGE_MS = 60 * 60 * 1000;

/**
 * Job directories of jobs that are finished (or gone) in the database: left behind by a worker that died
 * between the engine's end and the cleanup. Unfinished ones are kept, they hold resumable checkpoints.
 */
export async function sweepJobDirs(prisma: PrismaClient, storageDir: string, logger: Logger): Promise<number> {
  const root = path.join(storageDir, 'jobs');
  let names: string[];
  try {
    names = await readdir(root);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
  const ids = names.filter((n) => uuid.test(n));
  const alive = await prisma.job.findMany({
    where: { id: { in: ids }, status: { in: [...ACTIVE_STATUSES] } },
    select: { id: true },
  });
  const keep = new Set(alive.map((j) => j.id));
  let removed = 0;
  for (const id of ids) {
    if (keep.has(id)) continue;
    await rm(path.join(root, id), { recursive: true, force: true });
    removed += 1;
  }
  if (removed > 0) logger.info({ removed }, 'removed job directories of finished jobs');
  return removed;
}

export async function startWorker(config: Config, options: StartWorkerOptions = {}): Promise<RunningWorker> {
  const workerId = `${os.hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  const logger = (options.logger ?? pino({ level: config.logLevel, base: { service: 'worker' } })).child({ workerId });

  await migrate(config.databaseUrl);
  const prisma = createPrisma(config.databaseUrl);
  const store = await createStore(config);
  const cancels = await CancelBus.connect(config.redisUrl, config.queuePrefix, (err) =>
    logger.warn({ err: err.message }, 'cancel subscriber: redis connection error'),
  );
  // BullMQ workers block on Redis; ioredis must retry forever instead of failing their commands.
  const connection = new Redis(config.redisUrl, { maxRetriesPerRequest: null });

  const producer = createCompressionQueue(connection, config.queuePrefix);
  const jobs = new JobStates({
    prisma,
    publisher: connection,
    prefix: config.queuePrefix,
    onPublishError: (err, message) => logger.warn({ jobId: message.jobId, err: err.message }, 'job event not published'),
  });
  // Jobs end here (succeeded, failed): their webhook deliveries are created with the transition and sent
  // by the delivery worker of whichever worker process takes them.
  const webhookQueue = createWebhookQueue(connection, config.queuePrefix, config.webhooks);
  jobs.onTerminal(webhookTerminalHook(webhookQueue, logger));
  const webhooks = startDeliveryWorker({ prisma, connection, prefix: config.queuePrefix, config: config.webhooks, logger, queue: webhookQueue });

  const analysisQueue = createAnalysisQueue(connection, config.queuePrefix);

  await sweepJobDirs(prisma, config.workDir, logger);
  await store.cleanupTemp(TEMP_MAX_AGE_MS);
  const reconcile = async (): Promise<void> => {
    const result = await requeueOrphans(prisma, producer, { olderThanMs: ORPHAN_MIN_AGE_MS });
    if (result.requeued.length > 0) logger.warn({ requeued: result.requeued }, 'requeued jobs missing from Redis');
    const analyses = await requeuePendingAnalyses(prisma, analysisQueue, { olderThanMs: ORPHAN_MIN_AGE_MS });
    if (analyses.length > 0) logger.warn({ models: analyses }, 'requeued model analyses missing from Redis');
  };
  await reconcile();
  const reconcileTimer = setInterval(() => {
    reconcile().catch((err: unknown) => logger.warn({ err }, 'periodic requeue of orphaned jobs failed'));
  }, options.reconcileEveryMs ?? RECONCILE_EVERY_MS);
  reconcileTimer.unref();

  const processor = createJobProcessor({
    config,
    prisma,
    store,
    logger,
    cancels,
    jobs,
    workerId,
    ...(options.measure !== undefined ? { measure: options.measure } : {}),
    ...(options.measureRuns !== undefined ? { measureRuns: options.measureRuns } : {}),
    ...(options.onEngineStarted ? { onEngineStarted: options.onEngineStarted } : {}),
    ...(options.cancelPollMs !== undefined ? { cancelPollMs: options.cancelPollMs } : {}),
  });
  const worker = new Worker<CompressionJobData, JobOutcome>(COMPRESSION_QUEUE, processor, {
    connection,
    prefix: config.queuePrefix,
    concurrency: config.workerConcurrency,
    ...(options.lockDurationMs !== undefined ? { lockDuration: options.lockDurationMs } : {}),
    ...(options.stalledIntervalMs !== undefined ? { stalledInterval: options.stalledIntervalMs } : {}),
  });

  worker.on('failed', (job, err) => {
    if (!job) return;
    // Our processor records its own failures; this catches a failure it could not write (the database
    // was down) on the last attempt. Jobs BullMQ fails alone for stalling too often raise no event here:
    // requeueOrphans puts them back, and the claim limit in jobs.ts ends them.
    void job
      .getState()
      .then(async (state) => {
        if (state !== 'failed') return;
        const marked = await markFailedIfUnfinished(jobs, job.data.jobId, err.message);
        if (marked) logger.error({ jobId: job.data.jobId, err }, 'BullMQ failed the job; row marked failed');
      })
      .catch((e: unknown) => logger.error({ jobId: job.data.jobId, err: e }, 'could not reconcile a failed job'));
  });
  worker.on('error', (err) => logger.error({ err }, 'worker error'));

  // Upload analyses: one at a time per worker process (each imports torch), beside the compression jobs.
  const closingAnalyses = new AbortController();
  const analysisWorker = new Worker<AnalysisJobData, ModelTotals | null>(
    ANALYSIS_QUEUE,
    createAnalysisProcessor({ config, prisma, store, logger, signal: closingAnalyses.signal }),
    { connection, prefix: config.queuePrefix, concurrency: 1 },
  );
  analysisWorker.on('error', (err) => logger.error({ err }, 'analysis worker error'));
  await analysisWorker.waitUntilReady();
  // A stalled job's worker died (or blocked its event loop); BullMQ hands the job to a worker again.
  worker.on('stalled', (jobId) => logger.warn({ jobId }, 'job stalled; BullMQ moves it back to the queue'));
  await worker.waitUntilReady();
  logger.info({ concurrency: config.workerConcurrency, prefix: config.queuePrefix }, 'worker ready');

  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      clearInterval(reconcileTimer);
      closingAnalyses.abort();
      await Promise.all([worker.close(), analysisWorker.close()]);
      await analysisQueue.close();
      await webhooks.close();
      await webhookQueue.close();
      await producer.close();
      await cancels.close();
      await connection.quit();
      await prisma.$disconnect();
      logger.info('worker closed');
    })();
    return closing;
  };
  return { workerId, worker, prisma, jobs, close };
}
