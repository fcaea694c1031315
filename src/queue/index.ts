// Queue contract shared by the API (producer) and the worker (consumer).
// The database row is the source of truth for a job; the BullMQ job id equals the row's id.
import { Queue, type ConnectionOptions, type JobsOptions } from 'bullmq';

export const COMPRESSION_QUEUE = 'compression';

export interface CompressionJobData {
  jobId: string;
  tenantId: string;
}

/** What the worker reports through job.updateProgress and the SSE stream. */
export interface JobProgress {
  stage: string;
  done: number;
  total: number;
  /** 0..100 over the whole job */
  percent: number;
  message?: string;
}

export const defaultJobOptions: JobsOptions = {
  attempts: 3,
  backoff: { type: 'exponential', delay: 2000 },
  removeOnComplete: { count: 1000 },
  removeOnFail: { count: 5000 },
};

export function createCompressionQueue(connection: ConnectionOptions, prefix: string): Queue<CompressionJobData> {
  return new Queue<CompressionJobData>(COMPRESSION_QUEUE, { connection, prefix, defaultJobOptions });
}

/** `delay` adds the job held back (src/queue/fair.ts promotes it when its tenant has a free slot). */
export async function enqueueCompressionJob(
  queue: Queue<CompressionJobData>,
  data: CompressionJobData,
  options: { delay?: number } = {},
): Promise<void> {
  await queue.add('compress', data, { jobId: data.jobId, ...(options.delay ? { delay: options.delay } : {}) });
}

/**
 * Redis pub/sub channel on which the API publishes the id of a job the user canceled; workers kill
 * the engine of that job at once instead of waiting for their next database poll.
 */
export function cancelChannel(prefix: string): string {
  return `${prefix}:cancel`;
}

/** Anything with ioredis' `publish` (the API's shared connection). */
export interface Publisher {
  publish(channel: string, message: string): Promise<number>;
}

export async function publishCancel(redis: Publisher, prefix: string, jobId: string): Promise<void> {
  await redis.publish(cancelChannel(prefix), jobId);
}

/** Upload analysis (params, MACs, input shapes by the engine): a queue of its own, run by the workers. */
export const ANALYSIS_QUEUE = 'model-analysis';

export interface AnalysisJobData {
  modelId: string;
}

export const analysisJobOptions: JobsOptions = {
  attempts: 3,
  backoff: { type: 'exponential', delay: 2000 },
  removeOnComplete: { count: 1000 },
  removeOnFail: { count: 5000 },
};

export function createAnalysisQueue(connection: ConnectionOptions, prefix: string): Queue<AnalysisJobData> {
  return new Queue<AnalysisJobData>(ANALYSIS_QUEUE, { connection, prefix, defaultJobOptions: analysisJobOptions });
}

/** One analysis per model: the BullMQ job id is the model's id, so a second enqueue is a no-op. */
export async function enqueueAnalysis(queue: Queue<AnalysisJobData>, modelId: string): Promise<void> {
  await queue.add('analyze', { modelId }, { jobId: modelId });
}
