// Webhook deliveries. A terminal job transition creates one delivery row per subscribed endpoint inside the
// transition's transaction (terminal hook of src/jobs/state.ts), with its final body and a stable id, and
// enqueues a BullMQ job per delivery. A delivery worker (in the worker processes) sends it, records every
// attempt, and lets BullMQ retry non-2xx answers and timeouts with exponential backoff. The database decides:
// a delivery is final when it succeeded or used WEBHOOK_ATTEMPTS attempts; a sweeper re-enqueues pending
// deliveries whose BullMQ job was lost (Redis down when the job ended, or restarted without persistence).
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { randomUUID } from 'node:crypto';
import { DelayedError, Queue, Worker, type ConnectionOptions, type Job as QueueJob } from 'bullmq';
import type { Logger } from 'pino';
import type { Job, Prisma, PrismaClient } from '@prisma/client';
import type { WebhookConfig } from '../config.js';
import type { TerminalHook } from '../jobs/state.js';
import { jobView } from '../jobs/view.js';
import { forbiddenRange, guardedLookup } from './destination.js';
import { signWebhook } from './signing.js';

export const WEBHOOK_QUEUE = 'webhooks';
export const WEBHOOK_EVENTS = ['job.succeeded', 'job.failed', 'job.canceled'] as const;
export type WebhookEvent = (typeof WEBHOOK_EVENTS)[number];

export interface DeliveryJobData {
  deliveryId: string;
}

/** A delivery row is written in the transition's transaction; its BullMQ job may start before the commit. */
const COMMIT_GRACE_MS = 60_000;
const NOT_YET_COMMITTED_RETRY_MS = 250;
/** Bytes of a receiver's answer kept in the attempt log. */
const ERROR_SNIPPET = 200;
const SWEEP_EVERY_MS = 60_000;

export function createWebhookQueue(connection: ConnectionOptions, prefix: string, config: WebhookConfig): Queue<DeliveryJobData> {
  return new Queue<DeliveryJobData>(WEBHOOK_QUEUE, {
    connection,
    prefix,
    defaultJobOptions: {
      attempts: config.attempts,
      backoff: { type: 'exponential', delay: config.backoffMs },
      removeOnComplete: true,
      // Failed for good in BullMQ frees the id, so the sweeper can hand the delivery on if the row is pending.
      removeOnFail: true,
    },
  });
}

/** Delay before attempt `attempt + 1`: the same doubling BullMQ's exponential backoff applies. */
export function backoffAfter(attempt: number, config: WebhookConfig): number {
  return config.backoffMs * 2 ** (attempt - 1);
}

/**
 * The terminal hook: one delivery per endpoint of the job's tenant subscribed to the event. Enqueueing is
 * not awaited (a Redis outage must not undo a job's end); the sweeper enqueues what this could not.
 */
export function webhookTerminalHook(queue: Queue<DeliveryJobData>, logger: { warn(obj: object, msg: string): void }): TerminalHook {
  return async (tx: Prisma.TransactionClient, job: Job) => {
    const event = `job.${job.status}` as WebhookEvent;
    if (!WEBHOOK_EVENTS.includes(event)) return;
    const endpoints = await tx.webhook.findMany({ where: { tenantId: job.tenantId, events: { has: event } }, select: { id: true } });
    if (endpoints.length === 0) return;
    const body = JSON.stringify({ type: event, timestamp: new Date().toISOString(), data: { job: jobView(job) } });
    const ids = endpoints.map(() => randomUUID());
    await tx.webhookDelivery.createMany({
      data: endpoints.map((endpoint, i) => ({ id: ids[i]!, webhookId: endpoint.id, jobId: job.id, event, body })),
    });
    for (const deliveryId of ids) {
      queue
        .add('deliver', { deliveryId }, { jobId: deliveryId })
        .catch((err: unknown) => logger.warn({ deliveryId, err: (err as Error).message }, 'webhook delivery not enqueued; the sweeper will'));
    }
  };
}

export interface AttemptResult {
  statusCode: number | null;
  error: string | null;
  durationMs: number;
}

/** One HTTP POST of a signed body; never throws (failures are results). Redirects are not followed. */
export function postSigned(url: string, headers: Record<string, string>, body: string, config: WebhookConfig): Promise<AttemptResult> {
  const started = performance.now();
  const target = new URL(url);
  const client = target.protocol === 'https:' ? https : http;
  // Sockets skip the DNS lookup (and so guardedLookup) for an IP literal: check it here.
  const literal = target.hostname.replace(/^\[|\]$/g, '');
  const range = net.isIP(literal) ? forbiddenRange(literal) : null;
  if (range !== null && !config.allowPrivate) {
    return Promise.resolve({ statusCode: null, error: `${literal} is a ${range} address; webhooks are delivered to public addresses only`, durationMs: 0 });
  }
  return new Promise((resolve) => {
    let settled = false;
    const finish = (statusCode: number | null, error: string | null): void => {
      if (settled) return;
      settled = true;
      resolve({ statusCode, error, durationMs: Math.round(performance.now() - started) });
    };
    const request = client.request(
      target,
      {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'user-agent': 'tuckerize-webhooks/1', ...headers, 'content-length': Buffer.byteLength(body) },
        lookup: guardedLookup(config.allowPrivate) as never,
        timeout: config.timeoutMs,
      },
      (response) => {
        const chunks: Buffer[] = [];
        let kept = 0;
        response.on('data', (chunk: Buffer) => {
          if (kept < ERROR_SNIPPET) chunks.push(chunk);
          kept += chunk.length;
        });
        response.on('end', () => {
          const code = response.statusCode ?? 0;
          const ok = code >= 200 && code < 300;
          const snippet = Buffer.concat(chunks).toString('utf8').slice(0, ERROR_SNIPPET);
          finish(code, ok ? null : `HTTP ${code}${snippet ? `: ${snippet}` : ''}`);
        });
        response.on('error', (err) => finish(response.statusCode ?? null, err.message));
      },
    );
    request.on('timeout', () => {
      request.destroy(new Error(`no answer within ${config.timeoutMs} ms`));
    });
    request.on('error', (err) => finish(null, err.message));
    request.end(body);
  });
}

export interface DeliveryWorkerOptions {
  prisma: PrismaClient;
  connection: ConnectionOptions;
  prefix: string;
  config: WebhookConfig;
  logger: Logger;
  /** the queue the sweeper enqueues on (normally the one the terminal hook uses) */
  queue: Queue<DeliveryJobData>;
  sweepEveryMs?: number;
}

export interface DeliveryWorker {
  worker: Worker<DeliveryJobData>;
  /** enqueues pending deliveries that have no BullMQ job; returns how many */
  sweep(): Promise<number>;
  close(): Promise<void>;
}

export function startDeliveryWorker(options: DeliveryWorkerOptions): DeliveryWorker {
  const { prisma, config, logger, queue } = options;

  const deliver = async (job: QueueJob<DeliveryJobData>, token?: string): Promise<string> => {
    const { deliveryId } = job.data;
    const delivery = await prisma.webhookDelivery.findUnique({ where: { id: deliveryId }, include: { webhook: true } });
    if (!delivery) {
      if (Date.now() - job.timestamp < COMMIT_GRACE_MS) {
        // The job's transition has not committed yet: look again shortly, without spending an attempt.
        await job.moveToDelayed(Date.now() + NOT_YET_COMMITTED_RETRY_MS, token);
        throw new DelayedError();
      }
      return 'gone'; // the transition rolled back, or the endpoint was deleted
    }
    if (delivery.status !== 'pending') return delivery.status;

    const attempt = delivery.attempts + 1;
    const headers = signWebhook(delivery.webhook.secret, delivery.id, Math.floor(Date.now() / 1000), delivery.body);
    const result = await postSigned(delivery.webhook.url, { ...headers }, delivery.body, config);
    const ok = result.statusCode !== null && result.statusCode >= 200 && result.statusCode < 300;
    const final = ok || attempt >= config.attempts;
    await prisma.$transaction([
      prisma.webhookAttempt.create({
        data: { deliveryId, attempt, statusCode: result.statusCode, error: result.error, durationMs: result.durationMs },
      }),
      prisma.webhookDelivery.update({
        where: { id: deliveryId },
        data: {
          attempts: attempt,
          status: ok ? 'succeeded' : final ? 'failed' : 'pending',
          deliveredAt: ok ? new Date() : null,
          nextAttemptAt: final ? null : new Date(Date.now() + backoffAfter(attempt, config)),
        },
      }),
    ]);
    const log = { deliveryId, webhookId: delivery.webhookId, jobId: delivery.jobId, attempt, statusCode: result.statusCode };
    if (ok) {
      logger.info(log, 'webhook delivered');
      return 'succeeded';
    }
    if (final) {
      logger.warn({ ...log, error: result.error }, 'webhook delivery failed for good');
      return 'failed';
    }
    logger.info({ ...log, error: result.error }, 'webhook attempt failed; retrying with backoff');
    throw new Error(`attempt ${attempt} of ${config.attempts} failed: ${result.error}`);
  };

  const worker = new Worker<DeliveryJobData>(WEBHOOK_QUEUE, deliver, {
    connection: options.connection,
    prefix: options.prefix,
    concurrency: 8,
  });
  worker.on('error', (err) => logger.warn({ err: err.message }, 'webhook worker error'));

  const sweep = async (): Promise<number> => {
    const now = Date.now();
    const due = await prisma.webhookDelivery.findMany({
      where: {
        status: 'pending',
        OR: [
          { nextAttemptAt: null, createdAt: { lt: new Date(now - COMMIT_GRACE_MS) } },
          { nextAttemptAt: { lt: new Date(now - COMMIT_GRACE_MS) } },
        ],
      },
      select: { id: true },
      take: 500,
    });
    let added = 0;
    for (const { id } of due) {
      // BullMQ ignores an add whose id is still queued, delayed or running.
      if (await queue.getJob(id)) continue;
      await queue.add('deliver', { deliveryId: id }, { jobId: id });
      added += 1;
    }
    if (added > 0) logger.warn({ added }, 'webhook deliveries re-enqueued');
    return added;
  };
  const timer = setInterval(() => {
    sweep().catch((err: unknown) => logger.warn({ err: (err as Error).message }, 'webhook sweep failed'));
  }, options.sweepEveryMs ?? SWEEP_EVERY_MS);
  timer.unref();

  return {
    worker,
    sweep,
    close: async () => {
      clearInterval(timer);
      await worker.close();
    },
  };
}
