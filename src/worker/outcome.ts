// Stage 5 of a job: its outcome, written through the job state machine. Success stores the artifact, its
// metric rows and the report in one transaction; a failure is classified, and retried only when a new
// attempt can help (an engine crash, an internal error), never for bad input, memory exhaustion, a timeout.
import { rm } from 'node:fs/promises';
import { UnrecoverableError } from 'bullmq';
import type { Prisma } from '@prisma/client';
import type { ErrorCategory } from '../jobs/state.js';
import type { JobProgress } from '../queue/index.js';
import type { StoredObject } from '../store/index.js';
import { BadInputError, EngineCrashError, ResourceExhaustedError } from './engine.js';
import type { JobContext, JobOutcome } from './job-context.js';
import type { MetricRow } from './metrics.js';
import { ArtifactVerificationError } from './measure.js';

/** Canceled by the user: not a failure, never retried. */
export class JobCanceledError extends UnrecoverableError {
  override readonly name = 'JobCanceledError';
}

export class JobTimeoutError extends UnrecoverableError {
  override readonly name = 'JobTimeoutError';
}

/** The job's options no longer pass the contract's schema (a row older than a schema change). */
export class InvalidJobOptionsError extends UnrecoverableError {
  override readonly name = 'InvalidJobOptionsError';
}

export function errorCategory(error: Error): ErrorCategory {
  if (error instanceof BadInputError || error instanceof InvalidJobOptionsError) return 'bad_input';
  if (error instanceof ResourceExhaustedError) return 'resource_exhausted';
  if (error instanceof JobTimeoutError) return 'timeout';
  if (error instanceof EngineCrashError || error instanceof ArtifactVerificationError) return 'engine_crash';
  return 'internal';
}

export async function removeJobDir(ctx: JobContext): Promise<void> {
  await rm(ctx.paths.jobDir, { recursive: true, force: true });
}

export async function recordSuccess(
  ctx: JobContext,
  result: { stored: StoredObject; report: Record<string, unknown>; metricRows: MetricRow[] },
): Promise<JobOutcome> {
  const { stored, metricRows } = result;
  const { jobId } = ctx;
  const metrics = Object.fromEntries(metricRows.map((m) => [m.name, m.value]));
  // Guarded on status: a cancel that raced the last stage wins, and a second worker that somehow
  // ran the same job cannot mark it succeeded twice.
  const finished = await ctx.deps.jobs.succeed(jobId, {
    report: result.report as Prisma.InputJsonValue,
    metrics: metrics as Prisma.InputJsonValue,
    event: { sha256: stored.sha256, bytes: stored.bytes },
    within: async (tx) => {
      await tx.artifact.upsert({
        where: { jobId },
        create: { jobId, kind: 'model', sha256: stored.sha256, bytes: BigInt(stored.bytes), storageKey: stored.key },
        update: { sha256: stored.sha256, bytes: BigInt(stored.bytes), storageKey: stored.key },
      });
      await tx.metric.deleteMany({ where: { jobId } });
      if (metricRows.length > 0) await tx.metric.createMany({ data: metricRows.map((m) => ({ jobId, ...m })) });
    },
  });
  // The row is final by now; if Redis lost the BullMQ job meanwhile (a restart), this update cannot land
  // and must not turn a finished job into a retry.
  await ctx.job
    .updateProgress({ stage: 'done', done: 1, total: 1, percent: 100 } satisfies JobProgress)
    .catch((err: unknown) => ctx.log.warn({ err }, 'final progress update failed; the job row is already final'));
  await removeJobDir(ctx);
  if (!finished) {
    ctx.log.info('job left the running state during its last stage (canceled); result discarded');
    return { status: 'skipped', reason: 'canceled during the last stage' };
  }
  ctx.log.info({ sha256: stored.sha256, bytes: stored.bytes }, 'job succeeded');
  return { status: 'succeeded', artifactSha256: stored.sha256, bytes: stored.bytes };
}

/** Writes the failure to the row; returns the error BullMQ should see (retryable or not). */
export async function recordFailure(ctx: JobContext, err: unknown): Promise<Error> {
  const error = err instanceof Error ? err : new Error(String(err));
  const { jobs } = ctx.deps;
  const attempts = ctx.job.opts.attempts ?? 1;

  if (error instanceof JobCanceledError) {
    // The API normally wrote `canceled` already (and its event); this covers a cancel seen only by us.
    await jobs.cancel(ctx.jobId);
    await removeJobDir(ctx);
    ctx.log.info('job canceled; engine stopped');
    return error;
  }

  const category = errorCategory(error);
  const retryable = !(error instanceof UnrecoverableError);
  const lastAttempt = ctx.job.attemptsMade + 1 >= attempts;
  if (retryable && !lastAttempt) {
    const requeued = await jobs.requeue(ctx.jobId, {
      category,
      message: error.message,
      event: { attempt: ctx.job.attemptsMade + 1, of: attempts },
    });
    if (!requeued) {
      ctx.log.warn({ err: error, category }, 'attempt failed after the job row left running; nothing to retry');
      return error;
    }
    ctx.log.warn({ err: error, category }, 'attempt failed; BullMQ will retry (job dir kept for the engine checkpoints)');
    return error;
  }

  await jobs.fail(ctx.jobId, { category, message: error.message });
  await removeJobDir(ctx);
  ctx.log.error({ err: error, category }, 'job failed');
  return error;
}
