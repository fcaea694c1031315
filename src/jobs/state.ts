// The job state machine: the only code that writes `Job.status`.
//
//   create ──> queued ──claim──> running ──succeed──> succeeded
//                 ^                 │ ├───fail─────> failed      (also from queued: claims used up, BullMQ gave up)
//                 └─────requeue─────┘ └───cancel───> canceled    (also from queued)
//
// Every transition is a compare-and-set on the row's status inside one transaction, which also writes the
// job's `status` event row and, for the terminal ones, runs the registered terminal hooks (webhooks) — so a
// cancel racing a success ends with exactly one winner, one event and one hook call. After the commit one JSON
// message (JobEventMessage) goes to the Redis channel `${prefix}:job-events` for live followers; the database
// stays the source of truth, so a message lost while Redis is away costs latency, never correctness.
import { JobStatus, Prisma, type Job, type PrismaClient } from '@prisma/client';
import type { JobProgress, Publisher } from '../queue/index.js';
import { jobView, type JobView } from './view.js';

export const ACTIVE_STATUSES: readonly JobStatus[] = [JobStatus.queued, JobStatus.running];
export const TERMINAL_STATUSES: readonly JobStatus[] = [JobStatus.succeeded, JobStatus.failed, JobStatus.canceled];

export function isTerminal(status: string): boolean {
  return (TERMINAL_STATUSES as readonly string[]).includes(status);
}

/** Job.errorCategory: what a client may branch on. Only `engine_crash` and `internal` attempts are retried. */
export type ErrorCategory = 'bad_input' | 'resource_exhausted' | 'engine_crash' | 'timeout' | 'canceled' | 'internal';

/** Redis pub/sub channel of JobEventMessage (JSON), one message per transition and per progress update. */
export function jobEventsChannel(prefix: string): string {
  return `${prefix}:job-events`;
}

export interface JobEventMessage {
  jobId: string;
  tenantId: string;
  type: 'status' | 'progress';
  status: JobStatus;
  stage: string | null;
  /** 0..1 over the whole job */
  progress: number;
  /** status messages: the job as GET /v1/jobs/:id shows it */
  job?: JobView;
  /** progress messages: the worker's figure, as the SSE `progress` event carries it */
  detail?: JobProgress;
}

/** Runs inside the transaction of a terminal transition, after the row was written; a throw rolls it back. */
export type TerminalHook = (tx: Prisma.TransactionClient, job: Job) => Promise<void>;

export interface JobStateOptions {
  prisma: PrismaClient;
  /** the process's Redis command connection; null publishes nothing (the database alone still tells the truth) */
  publisher: Publisher | null;
  /** the queue prefix (QUEUE_PREFIX) the channel name is built from */
  prefix: string;
  onPublishError?: (err: Error, message: JobEventMessage) => void;
}

/** Fields of a new job; the status is always `queued`. */
export type NewJob = Omit<Prisma.JobUncheckedCreateInput, 'status' | 'id' | 'attempts' | 'startedAt' | 'finishedAt'>;

export interface Transitioned {
  job: Job;
  /** the status the row had just before this transition */
  from: JobStatus;
}

/** A loaded machine can take more than Prisma's 2 s / 5 s transaction defaults. */
const TX_OPTIONS = { maxWait: 10_000, timeout: 30_000 } as const;
/** Compare-and-set retries when the status changed between the read and the write (queued → running). */
const CAS_TRIES = 4;

interface Step {
  from: readonly JobStatus[];
  to: JobStatus;
  data: (current: Job) => Prisma.JobUncheckedUpdateManyInput;
  event: (current: Job) => Prisma.InputJsonObject;
  /** the row must belong to this tenant (API calls) */
  tenantId?: string;
  /** extra writes of a terminal transition (the artifact and metric rows of a success) */
  within?: (tx: Prisma.TransactionClient, job: Job) => Promise<void>;
}

export class JobStates {
  private readonly hooks = new Set<TerminalHook>();

  constructor(private readonly options: JobStateOptions) {}

  /** Registers a hook for every terminal transition of this process; returns its removal. */
  onTerminal(hook: TerminalHook): () => void {
    this.hooks.add(hook);
    return () => this.hooks.delete(hook);
  }

  async create(data: NewJob): Promise<Job> {
    const job = await this.options.prisma.$transaction(async (tx) => {
      const created = await tx.job.create({ data: { ...data, status: JobStatus.queued } });
      await tx.jobEvent.create({ data: { jobId: created.id, type: 'status', data: { status: 'queued' } } });
      return created;
    }, TX_OPTIONS);
    this.publishStatus(job);
    return job;
  }

  /** queued|running → running (running: the job's earlier worker died); null when it is finished or gone. */
  async claim(jobId: string, by: { workerId: string; attempt: number }): Promise<Job | null> {
    const done = await this.transition(jobId, {
      from: ACTIVE_STATUSES,
      to: JobStatus.running,
      data: (current) => ({
        attempts: { increment: 1 },
        startedAt: current.startedAt ?? new Date(),
        workerId: by.workerId,
        stage: 'staging',
        errorCategory: null,
        errorMessage: null,
      }),
      event: () => ({ status: 'running', attempt: by.attempt, workerId: by.workerId }),
    });
    return done?.job ?? null;
  }

  /** Stage and fraction of a running job, with its `progress` event; false once the job left `running`. */
  async progress(jobId: string, p: JobProgress): Promise<boolean> {
    const { prisma } = this.options;
    const [job] = await prisma.job.updateManyAndReturn({
      where: { id: jobId, status: JobStatus.running },
      data: { stage: p.stage, progress: p.percent / 100 },
    });
    if (!job) return false;
    await prisma.jobEvent.create({ data: { jobId, type: 'progress', data: { ...p } } });
    this.publish({ ...this.summary(job), type: 'progress', detail: p });
    return true;
  }

  /** running → succeeded; `within` writes the artifact and metric rows in the same transaction. */
  async succeed(
    jobId: string,
    result: {
      report: Prisma.InputJsonValue;
      metrics: Prisma.InputJsonValue;
      event: Prisma.InputJsonObject;
      within?: (tx: Prisma.TransactionClient, job: Job) => Promise<void>;
    },
  ): Promise<Job | null> {
    const done = await this.transition(jobId, {
      from: [JobStatus.running],
      to: JobStatus.succeeded,
      data: () => ({
        stage: 'done',
        progress: 1,
        finishedAt: new Date(),
        report: result.report,
        metrics: result.metrics,
        errorCategory: null,
        errorMessage: null,
      }),
      event: () => ({ ...result.event, status: 'succeeded' }),
      ...(result.within ? { within: result.within } : {}),
    });
    return done?.job ?? null;
  }

  /** queued|running → failed; null when the job had already finished. */
  async fail(jobId: string, error: { category: ErrorCategory; message: string }): Promise<Job | null> {
    const done = await this.transition(jobId, {
      from: ACTIVE_STATUSES,
      to: JobStatus.failed,
      data: () => ({ errorCategory: error.category, errorMessage: error.message, finishedAt: new Date() }),
      event: () => ({ status: 'failed', category: error.category, message: error.message }),
    });
    return done?.job ?? null;
  }

  /**
   * queued|running → canceled. With `tenantId` (the API) a row of another tenant is never touched. Null when
   * the job is already finished (or does not exist for that tenant).
   */
  async cancel(jobId: string, by: { tenantId?: string } = {}): Promise<Transitioned | null> {
    return this.transition(jobId, {
      from: ACTIVE_STATUSES,
      to: JobStatus.canceled,
      data: () => ({ finishedAt: new Date(), errorCategory: 'canceled', errorMessage: 'canceled by the client' }),
      event: (current) => ({ status: 'canceled', from: current.status }),
      ...(by.tenantId ? { tenantId: by.tenantId } : {}),
    });
  }

  /** running → queued after a failed attempt that will be retried; the event is a `retry` with `event`'s fields. */
  async requeue(
    jobId: string,
    error: { category: ErrorCategory; message: string; event?: Prisma.InputJsonObject },
  ): Promise<Job | null> {
    const done = await this.transition(jobId, {
      from: [JobStatus.running],
      to: JobStatus.queued,
      data: () => ({ stage: 'retrying', errorCategory: error.category, errorMessage: error.message }),
      event: () => ({ category: error.category, message: error.message, ...error.event }),
    });
    return done?.job ?? null;
  }

  private async transition(jobId: string, step: Step): Promise<Transitioned | null> {
    const terminal = isTerminal(step.to);
    const done = await this.options.prisma.$transaction(async (tx) => {
      for (let i = 0; i < CAS_TRIES; i++) {
        const current = await tx.job.findFirst({ where: { id: jobId, ...(step.tenantId ? { tenantId: step.tenantId } : {}) } });
        if (!current || !step.from.includes(current.status)) return null;
        // Compare-and-set: a concurrent transition that committed first makes this match nothing.
        const [job] = await tx.job.updateManyAndReturn({
          where: { id: jobId, status: current.status },
          data: { ...step.data(current), status: step.to },
        });
        if (!job) continue;
        const type = step.to === JobStatus.queued ? 'retry' : 'status';
        await tx.jobEvent.create({ data: { jobId, type, data: step.event(current) } });
        if (terminal) {
          await step.within?.(tx, job);
          for (const hook of this.hooks) await hook(tx, job);
        }
        return { job, from: current.status };
      }
      return null;
    }, TX_OPTIONS);
    if (done) this.publishStatus(done.job);
    return done;
  }

  private summary(job: Job): Omit<JobEventMessage, 'type'> {
    return { jobId: job.id, tenantId: job.tenantId, status: job.status, stage: job.stage, progress: job.progress };
  }

  private publishStatus(job: Job): void {
    this.publish({ ...this.summary(job), type: 'status', job: jobView(job) });
  }

  /**
   * Not awaited: a worker's connection queues commands while Redis is away, and a transition must not wait
   * for Redis. ioredis sends the commands of one connection in order, so followers see transitions in order.
   */
  private publish(message: JobEventMessage): void {
    const { publisher, prefix, onPublishError } = this.options;
    if (!publisher) return;
    publisher.publish(jobEventsChannel(prefix), JSON.stringify(message)).catch((err: unknown) => {
      onPublishError?.(err instanceof Error ? err : new Error(String(err)), message);
    });
  }
}
