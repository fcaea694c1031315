// The database, not Redis, says which jobs exist. A job row can be missing from BullMQ when the enqueue after
// the insert failed (Redis down) or when Redis lost its data in a restart. The worker calls requeueOrphans at
// startup (and may call it periodically) to put such jobs back on the queue.
import type { Queue } from 'bullmq';
import { ACTIVE_STATUSES } from '../jobs/state.js';
import { enqueueAnalysis, enqueueCompressionJob, type AnalysisJobData, type CompressionJobData } from '../queue/index.js';
import type { PrismaClient } from './client.js';

export interface RequeueResult {
  /** job ids added to the queue again */
  requeued: string[];
  /** unfinished rows that BullMQ still holds (waiting, active, delayed, ...) */
  present: number;
}

/**
 * Enqueues every queued or running job row that BullMQ does not hold, or holds only as finished (a row that
 * is not finished in the database must run again). `olderThanMs` skips rows created in the last moments,
 * whose API request may still be enqueueing them.
 */
export async function requeueOrphans(
  prisma: PrismaClient,
  queue: Queue<CompressionJobData>,
  options: { olderThanMs?: number; batchSize?: number } = {},
): Promise<RequeueResult> {
  const olderThan = new Date(Date.now() - (options.olderThanMs ?? 0));
  const batchSize = options.batchSize ?? 500;
  const result: RequeueResult = { requeued: [], present: 0 };
  let cursor: string | undefined;
  for (;;) {
    const rows = await prisma.job.findMany({
      where: { status: { in: [...ACTIVE_STATUSES] }, createdAt: { lte: olderThan } },
      select: { id: true, tenantId: true },
      orderBy: { id: 'asc' },
      take: batchSize,
      ...(cursor ? { cursor: { id: cursor }, skip: 1 } : {}),
    });
    for (const row of rows) {
      const existing = await queue.getJob(row.id);
      if (existing) {
        const state = await existing.getState();
        if (state !== 'completed' && state !== 'failed') {
          result.present += 1;
          continue;
        }
        await existing.remove();
      }
      await enqueueCompressionJob(queue, { jobId: row.id, tenantId: row.tenantId });
      result.requeued.push(row.id);
    }
    if (rows.length < batchSize) break;
    cursor = rows[rows.length - 1]?.id;
  }
  return result;
}

/**
 * The same for upload analyses: models still `pending` whose analysis job BullMQ lost (Redis restart) or
 * never got (the API's enqueue failed) are enqueued again. Returns the model ids.
 */
export async function requeuePendingAnalyses(
  prisma: PrismaClient,
  queue: Queue<AnalysisJobData>,
  options: { olderThanMs?: number; batchSize?: number } = {},
): Promise<string[]> {
  const olderThan = new Date(Date.now() - (options.olderThanMs ?? 0));
  const rows = await prisma.onnxModel.findMany({
    where: { analysis: 'pending', createdAt: { lte: olderThan } },
    select: { id: true },
    orderBy: { createdAt: 'asc' },
    take: options.batchSize ?? 500,
  });
  const requeued: string[] = [];
  for (const row of rows) {
    const existing = await queue.getJob(row.id);
    if (existing) {
      const state = await existing.getState();
      if (state !== 'completed' && state !== 'failed') continue;
      await existing.remove();
    }
    await enqueueAnalysis(queue, row.id);
    requeued.push(row.id);
  }
  return requeued;
}
