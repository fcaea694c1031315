// The BullMQ processor for one compression job: claim the row, then the stages, each in its own file:
//   stage-inputs.ts  job directory, inputs from the store, job.json
//   latency-stage.ts rule=latency only: onnxruntime times the candidate layers, the loop picks targetMacs
//   job-engine.ts    `tuckerize run job.json` through the engine runner (engine.ts)
//   measure.ts       onnxruntime-node verifies and measures the artifact; metrics.ts turns figures into rows
//   outcome.ts       success (artifact, metrics, report in one transaction) or a classified failure
// The Postgres row is the source of truth: a job already finished or canceled there is never run again,
// and every terminal outcome is written there (by src/jobs/state.ts) before the processor returns or throws.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { UnrecoverableError, type Job, type Processor } from 'bullmq';
import type { Logger } from 'pino';
import type { Prisma } from '@prisma/client';
import { JobOptionsSchema, type EngineJobOptions, type JobOptions } from '../contract/job-options.js';
import { isTerminal, type JobStates } from '../jobs/state.js';
import type { CompressionJobData, JobProgress } from '../queue/index.js';
import { CheckpointSync } from '../store/checkpoint-sync.js';
import type { JobContext, JobOutcome, ProcessorDeps } from './job-context.js';
import { runJobEngine } from './job-engine.js';
import type { LatencyPlanResult } from './latency.js';
import { planJobLatency } from './latency-stage.js';
import { measureArtifact } from './measure.js';
import { metricsFromMeasurement, metricsFromReport } from './metrics.js';
import { InvalidJobOptionsError, JobCanceledError, JobTimeoutError, recordFailure, recordSuccess } from './outcome.js';
import { overallProgress, ProgressThrottle, stageWeights } from './progress.js';
import { jobDirFor, jobPaths, stageInputs, writeJobFile } from './stage-inputs.js';

export type { JobOutcome, MeasureFn, ProcessorDeps } from './job-context.js';
export { metricsFromMeasurement, metricsFromReport } from './metrics.js';
export { ENGINE_SEED, jobDirFor } from './stage-inputs.js';
export { JobCanceledError, JobTimeoutError } from './outcome.js';

/** Claims allowed beyond BullMQ's attempts, for attempts lost with their worker. */
const EXTRA_CLAIMS = 2;
/** How often a running job re-reads its row, in case a cancel was published while Redis was away. */
const DEFAULT_CANCEL_POLL_MS = 2000;

type JobRow = Prisma.JobGetPayload<{ include: { model: true; dataset: true } }>;

export function createJobProcessor(deps: ProcessorDeps): Processor<CompressionJobData, JobOutcome> {
  return (job) => new JobRun(deps, job).run();
}

/**
 * For jobs BullMQ failed without our processor getting to write the row (stalled too often after worker
 * crashes): mark the row failed so it does not stay `running` forever.
 */
export async function markFailedIfUnfinished(jobs: JobStates, jobId: string, message: string): Promise<boolean> {
  return (await jobs.fail(jobId, { category: 'internal', message })) !== null;
}

/** The options the API accepted, parsed again with the same schema: typed, and checked once more. */
function parseOptions(options: unknown): JobOptions {
  const parsed = JobOptionsSchema.safeParse(options);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const where = issue && issue.path.length > 0 ? `options.${issue.path.join('.')}: ` : '';
  throw new InvalidJobOptionsError(`the job's options are no longer valid: ${where}${issue?.message ?? 'invalid'}; create the job again`);
}

class JobRun {
  private readonly ctx: JobContext;
  private readonly log: Logger;
  private readonly jobId: string;
  private stopping: 'canceled' | 'timeout' | null = null;
  /** Aborts whatever runs (engine commands, onnxruntime timing) on cancel/timeout. */
  private readonly abort = new AbortController();
  private weights: Record<string, number> = stageWeights(false);
  /** 0..100 over the whole job, as last computed. */
  private percent = 0;
  private readonly throttle: ProgressThrottle;
  /** The engine's checkpoints, copied to the store so the next attempt resumes on any worker. */
  private readonly checkpoints: CheckpointSync;

  constructor(private readonly deps: ProcessorDeps, private readonly job: Job<CompressionJobData>) {
    this.jobId = job.data.jobId;
    this.log = deps.logger.child({ jobId: this.jobId, attempt: job.attemptsMade + 1 });
    this.throttle = new ProgressThrottle(
      (p) => this.writeProgress(p),
      (err) => this.log.warn({ err }, 'progress update failed; the job goes on'),
    );
    const paths = jobPaths(jobDirFor(deps.config.workDir, this.jobId));
    this.checkpoints = new CheckpointSync(deps.store, this.jobId, paths.workDir, this.log);
    this.ctx = {
      deps,
      job,
      jobId: this.jobId,
      log: this.log,
      paths,
      signal: this.abort.signal,
      throwIfStopping: () => {
        if (this.stopping) throw this.stopError();
      },
      pushProgress: (p) => this.pushProgress(p),
      event: (type, data) => this.event(type, data),
      eventInBackground: (type, data) => {
        this.event(type, data).catch((err: unknown) => this.log.warn({ err, type }, 'could not record job event'));
      },
    };
  }

  async run(): Promise<JobOutcome> {
    const { prisma, jobs } = this.deps;
    const row = await prisma.job.findUnique({ where: { id: this.jobId }, include: { model: true, dataset: true } });
    if (!row) throw new UnrecoverableError(`job ${this.jobId} has no database row; it was deleted or never created`);
    if (isTerminal(row.status)) {
      this.log.info({ status: row.status }, 'job already finished in the database; not running it again');
      return { status: 'skipped', reason: `job is ${row.status}` };
    }

    // Each claim counts; BullMQ's own attempt counter does not see a worker that died (stalled jobs, or
    // a job requeued from the database after Redis lost it), so a job that keeps killing its workers
    // would otherwise run forever.
    const maxClaims = (this.job.opts.attempts ?? 1) + EXTRA_CLAIMS;
    if (row.attempts >= maxClaims) {
      const message = `the job was started ${row.attempts} times without finishing (its workers died); giving up`;
      await jobs.fail(this.jobId, { category: 'internal', message });
      this.log.error({ attempts: row.attempts }, message);
      throw new UnrecoverableError(message);
    }

    // Claim the row only while it is still queued/running: a cancel that lands in between wins.
    const claimed = await jobs.claim(this.jobId, { workerId: this.deps.workerId, attempt: this.job.attemptsMade + 1 });
    if (!claimed) {
      this.log.info('job was canceled before it started');
      return { status: 'skipped', reason: 'canceled before start' };
    }
    this.log.info({ model: row.modelId, dataset: row.datasetId ?? row.builtinDataset }, 'job started');

    const unsubscribe = this.deps.cancels.on(this.jobId, () => this.stop('canceled'));
    const poll = setInterval(() => void this.pollCanceled(), this.deps.cancelPollMs ?? DEFAULT_CANCEL_POLL_MS);
    const elapsedMs = row.startedAt ? Date.now() - row.startedAt.getTime() : 0;
    const timeout = setTimeout(() => this.stop('timeout'), Math.max(0, this.deps.config.jobTimeoutMs - elapsedMs));
    try {
      const options = parseOptions(row.options);
      this.weights = stageWeights(options.finetune !== undefined, options.rule === 'latency');
      return await this.execute(row, options);
    } catch (err) {
      await this.throttle.close();
      throw await recordFailure(this.ctx, err);
    } finally {
      unsubscribe();
      clearInterval(poll);
      clearTimeout(timeout);
      await this.settleCheckpoints();
    }
  }

  /** After an attempt: a finished job's checkpoints are deleted; an unfinished one's are copied once more. */
  private async settleCheckpoints(): Promise<void> {
    try {
      await this.checkpoints.stop();
      const row = await this.deps.prisma.job.findUnique({ where: { id: this.jobId }, select: { status: true } });
      if (!row || isTerminal(row.status)) await this.checkpoints.discard();
      else await this.checkpoints.flush();
    } catch (err) {
      this.log.warn({ err }, 'engine checkpoints in the store not settled; they are deleted with the next finished attempt');
    }
  }

  private async execute(row: JobRow, options: JobOptions): Promise<JobOutcome> {
    const { ctx } = this;
    const { paths } = ctx;
    const dataset = await stageInputs(this.deps.store, paths, row);
    // An attempt on another worker left its checkpoints in the store: the engine resumes from them.
    await this.checkpoints.restore();
    this.checkpoints.start(this.deps.config.checkpointSyncMs);

    let latencyPlan: LatencyPlanResult | null = null;
    let engineOptions: EngineJobOptions = options;
    if (options.rule === 'latency' && options.targetLatency !== undefined) {
      const planned = await planJobLatency(ctx, { ...options, targetLatency: options.targetLatency });
      ctx.throwIfStopping();
      latencyPlan = planned.plan;
      engineOptions = planned.engineOptions;
    }
    await writeJobFile(paths, { jobId: this.jobId, dataset, threads: this.deps.config.engineThreads, options: engineOptions });
    this.pushProgress({ stage: 'staging', done: 1, total: 1 });

    const result = await runJobEngine(ctx);
    const compressedPath = path.join(paths.outputDir, result.artifact);
    const report = JSON.parse(await readFile(path.join(paths.outputDir, result.report), 'utf8')) as Record<string, unknown>;
    let plan: unknown = null;
    try {
      plan = JSON.parse(await readFile(path.join(paths.outputDir, result.plan), 'utf8'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }

    const measurement = await measureArtifact(ctx, { compressedPath, modelInputs: row.model.inputs, options, report });
    ctx.throwIfStopping();

    this.pushProgress({ stage: 'store', done: 0, total: 1 });
    const stored = await this.deps.store.ingestFile(compressedPath);
    await this.throttle.flush();
    await this.throttle.close();
    return recordSuccess(ctx, {
      stored,
      report: { ...report, plan, measurement, latencyPlan, engineSummary: result.summary },
      metricRows: [...metricsFromReport(report), ...metricsFromMeasurement(measurement)],
    });
  }

  private pushProgress(p: Omit<JobProgress, 'percent'>): void {
    // A stage this worker has no weight for (a newer engine) keeps the figure where it was.
    const fraction = overallProgress(this.weights, p.stage, p.done, p.total);
    if (fraction !== null) this.percent = Math.round(fraction * 1000) / 10;
    this.throttle.push({ ...p, percent: this.percent });
  }

  /** Throttled sink: BullMQ's job progress (the queue dashboard), then the row, its event and job-events. */
  private async writeProgress(p: JobProgress): Promise<void> {
    await this.job.updateProgress(p);
    await this.deps.jobs.progress(this.jobId, p);
  }

  private async event(type: string, data: Prisma.InputJsonValue): Promise<void> {
    await this.deps.prisma.jobEvent.create({ data: { jobId: this.jobId, type, data } });
  }

  private async pollCanceled(): Promise<void> {
    try {
      const row = await this.deps.prisma.job.findUnique({ where: { id: this.jobId }, select: { status: true } });
      if (row?.status === 'canceled') this.stop('canceled');
    } catch (err) {
      // Postgres may be restarting; the next poll (or the Redis message) will catch the cancel.
      this.log.warn({ err }, 'cancel poll failed');
    }
  }

  private stop(reason: 'canceled' | 'timeout'): void {
    if (this.stopping) return;
    this.stopping = reason;
    this.log.info({ reason }, 'stopping the engine');
    this.abort.abort(this.stopError());
  }

  private stopError(): Error {
    return this.stopping === 'timeout'
      ? new JobTimeoutError(`job exceeded its time limit of ${this.deps.config.jobTimeoutMs} ms (JOB_TIMEOUT_MS) and was stopped`)
      : new JobCanceledError('job was canceled');
  }
}
