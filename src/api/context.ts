// What route plugins need, built once per app by buildApp.
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config.js';
import type { PrismaClient } from '../db/client.js';
import type { JobStates } from '../jobs/state.js';
import type { FairDispatcher } from '../queue/fair.js';
import type { CompressionJobData } from '../queue/index.js';
import type { ArtifactStore } from '../store/artifacts.js';
import type { JobEventHub } from './job-events.js';
import type { ModelAnalyzer } from './model-analysis.js';

export interface AppContext {
  config: Config;
  prisma: PrismaClient;
  /** commands (rate limits, cancel publishing, readiness); not for blocking calls */
  redis: Redis;
  queue: Queue<CompressionJobData>;
  store: ArtifactStore;
  events: JobEventHub;
  /** adds new jobs to the queue so that tenants are served round-robin */
  dispatcher: FairDispatcher;
  /** the job state machine: every status change goes through it */
  jobs: JobStates;
  /** null when analysis is disabled */
  analyzer: ModelAnalyzer | null;
}
