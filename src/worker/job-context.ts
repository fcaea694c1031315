// What every stage of a compression job gets: the processor's dependencies and the running job's context.
import type { Job } from 'bullmq';
import type { Logger } from 'pino';
import type { Prisma, PrismaClient } from '@prisma/client';
import type { Config } from '../config.js';
import type { JobStates } from '../jobs/state.js';
import type { CancelBus } from '../queue/cancel.js';
import type { CompressionJobData, JobProgress } from '../queue/index.js';
import type { ArtifactStore } from '../store/index.js';
import type { JobPaths } from './stage-inputs.js';
import type { MeasurementReport, VerifyOptions } from './verify.js';

export type MeasureFn = (options: VerifyOptions) => Promise<MeasurementReport>;

export type JobOutcome =
  | { status: 'succeeded'; artifactSha256: string; bytes: number }
  | { status: 'skipped'; reason: string };

export interface ProcessorDeps {
  config: Config;
  prisma: PrismaClient;
  store: ArtifactStore;
  logger: Logger;
  cancels: CancelBus;
  /** the job state machine: every status change goes through it */
  jobs: JobStates;
  workerId: string;
  /** Defaults to verify.ts's verifyAndMeasure, loaded on first use; null skips measurement. */
  measure?: MeasureFn | null;
  /** Latency runs per model in the verify stage. */
  measureRuns?: number;
  /** Period of the database check for a cancel (the Redis message is the fast path). */
  cancelPollMs?: number;
  /** Observer for operators' tooling and fault tests: the engine of `jobId` now runs as group `pgid`. */
  onEngineStarted?: (info: { jobId: string; pgid: number; attempt: number }) => void;
}

/** One attempt of one job, as the stages see it. */
export interface JobContext {
  deps: ProcessorDeps;
  job: Job<CompressionJobData>;
  jobId: string;
  log: Logger;
  paths: JobPaths;
  /** aborted when the job is canceled or runs out of time: every stage stops what it runs */
  signal: AbortSignal;
  /** throws the cancel/timeout error when the job is stopping */
  throwIfStopping(): void;
  /** throttled: Redis, the job row, the event log */
  pushProgress(p: Omit<JobProgress, 'percent'>): void;
  /** one row of the job's event log */
  event(type: string, data: Prisma.InputJsonValue): Promise<void>;
  /** the same, from handlers that cannot await */
  eventInBackground(type: string, data: Prisma.InputJsonValue): void;
}
