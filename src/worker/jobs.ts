// The BullMQ processor for one compression job: database row → job directory → engine → artifact.
// The Postgres row is the source of truth: a job already finished or canceled there is never run again,
// and every terminal outcome is written there before the processor returns or throws.
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { UnrecoverableError, type Job, type Processor } from 'bullmq';
import type { Logger } from 'pino';
import { Prisma, type PrismaClient } from '@prisma/client';
import type { Config } from '../config.js';
import { isTerminal, type JobStates } from '../jobs/state.js';
import type { CancelBus } from '../queue/cancel.js';
import type { CompressionJobData, JobProgress } from '../queue/index.js';
import type { ArtifactStore } from '../store/artifacts.js';
import {
  BadInputError,
  classifyExit,
  EngineCrashError,
  killStaleEngine,
  recordEngine,
  spawnEngine,
  type EngineEvent,
  type EngineExit,
} from './engine.js';
import { overallProgress, ProgressThrottle, stageWeights } from './progress.js';
import type { LatencyPlanResult } from './latency.js';
import type { MeasurementReport, VerifyOptions } from './verify.js';

/** The engine seeds torch/numpy with this, so two runs of one job give the same model. */
export const ENGINE_SEED = 0;
/** Claims allowed beyond BullMQ's attempts, for attempts lost with their worker. */
const EXTRA_CLAIMS = 2;
/** Batch timed besides batch 1 when the model's batch dimension is dynamic. */
const DYNAMIC_BATCH = 8;
/** How often a running job re-reads its row, in case a cancel was published while Redis was away. */
const DEFAULT_CANCEL_POLL_MS = 2000;

export type JobOutcome =
  | { status: 'succeeded'; artifactSha256: string; bytes: number }
  | { status: 'skipped'; reason: string };

/** Canceled by the user: not a failure, never retried. */
export class JobCanceledError extends UnrecoverableError {
  override readonly name = 'JobCanceledError';
}

export class JobTimeoutError extends UnrecoverableError {
  override readonly name = 'JobTimeoutError';
}

export type MeasureFn = (options: VerifyOptions) => Promise<MeasurementReport>;

/** The compressed model failed verification (does not load, or its inputs/outputs differ): an engine bug. */
export class ArtifactVerificationError extends UnrecoverableError {
  override readonly name = 'ArtifactVerificationError';
}

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

export function jobDirFor(storageDir: string, jobId: string): string {
  return path.join(storageDir, 'jobs', jobId);
}

/** JSON written as tmp + rename, so the engine never reads half a file after a crash. */
async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${randomUUID()}.tmp`;
  await writeFile(tmp, JSON.stringify(value, null, 2));
  await rename(tmp, file);
}

/** Copies a store object into the job directory (a hard link on the file store); kept across attempts. */
async function stageInput(store: ArtifactStore, key: string, target: string): Promise<void> {
  try {
    await stat(target);
    return; // staged by an earlier attempt of this job
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await store.fetchTo(key, target);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function finiteNumber(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

interface MetricRow {
  name: string;
  value: number;
  unit: string | null;
}

/** Headline numbers of the engine report (and the measurement, when present) as metric rows. */
export function metricsFromReport(report: Record<string, unknown>): MetricRow[] {
  const rows: MetricRow[] = [];
  const add = (name: string, value: unknown, unit: string | null): void => {
    const v = finiteNumber(value);
    if (v !== undefined) rows.push({ name, value: v, unit });
  };
  const totals = isRecord(report.totals) ? report.totals : {};
  for (const kind of ['params', 'macs'] as const) {
    const t = isRecord(totals[kind]) ? totals[kind] : {};
    add(`${kind}_before`, t.before, kind === 'params' ? 'weights' : 'MACs');
    add(`${kind}_after`, t.after, kind === 'params' ? 'weights' : 'MACs');
    // Every *_reduction metric is before/after ("4.9× fewer"); the engine's totals.ratio is after/before
    // (the convention of the targetMacs option), so it is recomputed here rather than copied.
    const before = finiteNumber(t.before);
    const after = finiteNumber(t.after);
    if (before !== undefined && after !== undefined && after > 0) add(`${kind}_reduction`, before / after, 'x');
  }
  const accuracy = isRecord(report.accuracy) ? report.accuracy : null;
  if (accuracy) {
    for (const which of ['original', 'compressed', 'finetuned'] as const) {
      const section = isRecord(accuracy[which]) ? accuracy[which] : null;
      if (!section) continue;
      add(`top1_${which}`, section.top1, 'fraction');
      add(`top5_${which}`, section.top5, 'fraction');
      add(`agreement_${which}`, section.agreement, 'fraction');
    }
  }
  const finetune = isRecord(report.finetune) ? report.finetune : null;
  if (finetune) {
    add('finetune_wall_seconds', finetune.wallSeconds, 's');
    add('finetune_images_per_second', finetune.imagesPerSecond, 'images/s');
    add('finetune_steps', finetune.steps, 'steps');
  }
  const timings = isRecord(report.timings) ? report.timings : {};
  for (const [stage, seconds] of Object.entries(timings)) add(`stage_seconds_${stage}`, seconds, 's');
  return rows;
}

/** The Table-1 figures onnxruntime-node measured (latency, energy estimate) and the fidelity check. */
export function metricsFromMeasurement(m: MeasurementReport | null): MetricRow[] {
  if (!m) return [];
  const rows: MetricRow[] = [];
  const add = (name: string, value: unknown, unit: string | null): void => {
    const v = finiteNumber(value);
    if (v !== undefined) rows.push({ name, value: v, unit });
  };
  const t = m.table1;
  for (const [name, c, unit] of [
    ['ort_weights', t.weights, 'weights'],
    ['ort_macs', t.macs, 'MACs'],
    ['latency_ms', t.latencyMs, 'ms'],
    ['energy_mj_estimate', t.energyMillijoulesEstimate, 'mJ'],
  ] as const) {
    add(`${name}_before`, c.before, unit);
    add(`${name}_after`, c.after, unit);
    add(`${name}_reduction`, c.ratio, 'x');
  }
  for (const l of m.latency) add(`speedup_batch${l.batch}`, l.speedup, 'x');
  add('max_relative_error', m.fidelity.compressed.maxRelativeError, 'fraction');
  add('top1_agreement', m.fidelity.compressed.top1Agreement, 'fraction');
  return rows;
}

/** First dimension of the model's first input when it is a fixed number; 1 for dynamic batch. */
function batchOf(inputs: unknown): number {
  if (!Array.isArray(inputs) || !isRecord(inputs[0])) return DYNAMIC_BATCH;
  const first = inputs[0];
  const dims = Array.isArray(first.shape) ? first.shape : Array.isArray(first.dims) ? first.dims : [];
  const n = dims[0];
  return typeof n === 'number' && n > 0 ? n : DYNAMIC_BATCH;
}

/** onnxruntime-node is heavy to load: imported on the first job that gets this far, not at worker start. */
async function loadMeasure(): Promise<MeasureFn> {
  const { verifyAndMeasure } = await import('./verify.js');
  return verifyAndMeasure;
}

export function createJobProcessor(deps: ProcessorDeps): Processor<CompressionJobData, JobOutcome> {
  return (job) => new JobRun(deps, job).run();
}

type Outcome = 'canceled' | 'timeout' | null;

class JobRun {
  private readonly log: Logger;
  private readonly jobId: string;
  private readonly jobDir: string;
  private readonly enginePidFile: string;
  private stopping: Outcome = null;
  private kill: (() => Promise<EngineExit>) | null = null;
  /** Aborts the latency rule's candidate timing (engine commands + onnxruntime) on cancel/timeout. */
  private readonly latencyAbort = new AbortController();
  private weights: Record<string, number> = stageWeights(false);
  /** 0..100 over the whole job, as last computed. */
  private percent = 0;
  private readonly throttle: ProgressThrottle;

  constructor(private readonly deps: ProcessorDeps, private readonly job: Job<CompressionJobData>) {
    this.jobId = job.data.jobId;
    this.log = deps.logger.child({ jobId: this.jobId, attempt: job.attemptsMade + 1 });
    this.jobDir = jobDirFor(deps.config.workDir, this.jobId);
    this.enginePidFile = path.join(this.jobDir, 'engine.pid');
    this.throttle = new ProgressThrottle(
      (p) => this.writeProgress(p),
      (err) => this.log.warn({ err }, 'progress update failed; the job goes on'),
    );
  }

  async run(): Promise<JobOutcome> {
    const { prisma } = this.deps;
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
      await this.deps.jobs.fail(this.jobId, { category: 'internal', message });
      this.log.error({ attempts: row.attempts }, message);
      throw new UnrecoverableError(message);
    }

    // Claim the row only while it is still queued/running: a cancel that lands in between wins.
    const claimed = await this.deps.jobs.claim(this.jobId, { workerId: this.deps.workerId, attempt: this.job.attemptsMade + 1 });
    if (!claimed) {
      this.log.info('job was canceled before it started');
      return { status: 'skipped', reason: 'canceled before start' };
    }
    this.log.info({ model: row.modelId, dataset: row.datasetId ?? row.builtinDataset }, 'job started');

    const options = isRecord(row.options) ? row.options : {};
    this.weights = stageWeights(isRecord(options.finetune), options.rule === 'latency');

    const unsubscribe = this.deps.cancels.on(this.jobId, () => void this.stop('canceled'));
    const poll = setInterval(() => void this.pollCanceled(), this.deps.cancelPollMs ?? DEFAULT_CANCEL_POLL_MS);
    const elapsedMs = row.startedAt ? Date.now() - row.startedAt.getTime() : 0;
    const timeout = setTimeout(() => void this.stop('timeout'), Math.max(0, this.deps.config.jobTimeoutMs - elapsedMs));
    try {
      return await this.execute(row, options);
    } catch (err) {
      await this.throttle.close();
      throw await this.recordFailure(err);
    } finally {
      unsubscribe();
      clearInterval(poll);
      clearTimeout(timeout);
    }
  }

  private async execute(
    row: Prisma.JobGetPayload<{ include: { model: true; dataset: true } }>,
    options: Record<string, unknown>,
  ): Promise<JobOutcome> {
    const { config, store } = this.deps;
    const outputDir = path.join(this.jobDir, 'out');
    const workDir = path.join(this.jobDir, 'work');
    await mkdir(outputDir, { recursive: true });
    await mkdir(workDir, { recursive: true });

    const modelPath = path.join(this.jobDir, 'input.onnx');
    await stageInput(store, row.model.storageKey, modelPath);
    let dataset: string | null = row.builtinDataset;
    if (row.dataset) {
      // The engine picks the reader by extension (npz | zip); store objects have none.
      dataset = path.join(this.jobDir, `dataset.${row.dataset.format}`);
      await stageInput(store, row.dataset.storageKey, dataset);
    }

    // Rule latency: onnxruntime-node times the engine's candidate layers first; the engine gets the table.
    let latencyPlan: LatencyPlanResult | null = null;
    let engineOptions = options;
    if (options.rule === 'latency') {
      latencyPlan = await this.planLatency(modelPath, path.join(workDir, 'latency'), options);
      if (this.stopping) throw this.stopError();
      const { latencyJobOptions } = await import('./latency.js');
      engineOptions = latencyJobOptions(options, latencyPlan);
    }

    const jobFile = path.join(this.jobDir, 'job.json');
    await writeJsonAtomic(jobFile, {
      jobId: this.jobId,
      model: modelPath,
      dataset,
      outputDir,
      workDir,
      threads: config.engineThreads,
      seed: ENGINE_SEED,
      options: engineOptions,
    });
    this.pushProgress({ stage: 'staging', done: 1, total: 1 });

    // An engine of an earlier attempt survives its worker's SIGKILL; it must not write beside the new one.
    const stale = await killStaleEngine(this.enginePidFile, jobFile);
    if (stale !== null) this.log.warn({ pgid: stale }, 'killed the engine of an earlier attempt that was still running');
    const exit = await this.runEngine(jobFile);
    if (this.stopping) throw this.stopError();
    const failure = classifyExit(exit);
    if (failure) throw failure;
    const result = exit.result!;

    const compressedPath = path.join(outputDir, result.artifact);
    const reportText = await readFile(path.join(outputDir, result.report), 'utf8');
    const report = JSON.parse(reportText) as Record<string, unknown>;
    let plan: unknown = null;
    try {
      plan = JSON.parse(await readFile(path.join(outputDir, result.plan), 'utf8'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }

    const measurement = await this.measure(modelPath, compressedPath, outputDir, row.model.inputs, options, report);
    if (this.stopping) throw this.stopError();

    this.pushProgress({ stage: 'store', done: 0, total: 1 });
    const stored = await store.ingestFile(compressedPath);
    const fullReport: Record<string, unknown> = { ...report, plan, measurement, latencyPlan, engineSummary: result.summary };
    const metricRows = [...metricsFromReport(report), ...metricsFromMeasurement(measurement)];
    const metrics = Object.fromEntries(metricRows.map((m) => [m.name, m.value]));
    await this.throttle.flush();
    await this.throttle.close();

    // Guarded on status: a cancel that raced the last stage wins, and a second worker that somehow
    // ran the same job cannot mark it succeeded twice.
    const finished = await this.deps.jobs.succeed(this.jobId, {
      report: fullReport as Prisma.InputJsonValue,
      metrics: metrics as Prisma.InputJsonValue,
      event: { sha256: stored.sha256, bytes: stored.bytes },
      within: async (tx) => {
      await tx.artifact.upsert({
        where: { jobId: this.jobId },
        create: { jobId: this.jobId, kind: 'model', sha256: stored.sha256, bytes: BigInt(stored.bytes), storageKey: stored.key },
        update: { sha256: stored.sha256, bytes: BigInt(stored.bytes), storageKey: stored.key },
      });
      await tx.metric.deleteMany({ where: { jobId: this.jobId } });
      if (metricRows.length > 0) {
        await tx.metric.createMany({ data: metricRows.map((m) => ({ jobId: this.jobId, ...m })) });
      }
      },
    });
    // The row is final by now; if Redis lost the BullMQ job meanwhile (a restart), this update cannot land
    // and must not turn a finished job into a retry.
    await this.job
      .updateProgress({ stage: 'done', done: 1, total: 1, percent: 100 } satisfies JobProgress)
      .catch((err: unknown) => this.log.warn({ err }, 'final progress update failed; the job row is already final'));
    await this.removeJobDir();
    if (!finished) {
      this.log.info('job left the running state during its last stage (canceled); result discarded');
      return { status: 'skipped', reason: 'canceled during the last stage' };
    }
    this.log.info({ sha256: stored.sha256, bytes: stored.bytes }, 'job succeeded');
    return { status: 'succeeded', artifactSha256: stored.sha256, bytes: stored.bytes };
  }

  private async planLatency(modelPath: string, workDir: string, options: Record<string, unknown>): Promise<LatencyPlanResult> {
    const { planForLatency } = await import('./latency.js');
    const { config } = this.deps;
    try {
      const result = await planForLatency({
        python: config.enginePython,
        engineDir: config.engineDir,
        env: { LANG: 'C.UTF-8', OMP_NUM_THREADS: String(config.engineThreads), MKL_NUM_THREADS: String(config.engineThreads) },
        signal: this.latencyAbort.signal,
        modelPath,
        workDir,
        targetLatency: Number(options.targetLatency),
        ...(Array.isArray(options.inputShape) ? { inputShape: options.inputShape as number[] } : {}),
        ...(typeof options.roundTo === 'number' ? { roundTo: options.roundTo } : {}),
        force: options.force === true,
        threads: config.ortThreads,
        runs: this.deps.measureRuns ?? 20,
        warmup: 3,
        seed: ENGINE_SEED,
        onRound: (round, maxRounds) => {
          this.pushProgress({
            stage: 'latency', done: round.round, total: maxRounds,
            message: `targetMacs ${round.targetMacs.toFixed(3)}: predicted latency ratio ${round.predictedRatio?.toFixed(3) ?? '?'}`
              + ` (${round.keptSlow.length} layer(s) kept as slower in onnxruntime)`,
          });
        },
      });
      await this.event('latency', JSON.parse(JSON.stringify(result)) as Prisma.InputJsonValue);
      this.log.info({ targetMacs: result.targetMacs, predictedRatio: result.predictedRatio, converged: result.converged }, 'latency plan ready');
      return result;
    } catch (err) {
      // A cancel/timeout aborted the engine command or the timing: report that, not the abort.
      if (this.stopping) throw this.stopError();
      throw err;
    }
  }

  private async runEngine(jobFile: string): Promise<EngineExit> {
    const { config } = this.deps;
    const engine = spawnEngine({
      python: config.enginePython,
      engineDir: config.engineDir,
      jobFile,
      cwd: this.jobDir,
      env: {
        LANG: 'C.UTF-8',
        // BLAS/OpenMP pools size themselves to all cores otherwise, fighting the other jobs.
        OMP_NUM_THREADS: String(config.engineThreads),
        MKL_NUM_THREADS: String(config.engineThreads),
      },
      onEvent: (event) => this.onEngineEvent(event),
      onStrayLine: (line) => this.log.info({ line: line.slice(0, 2000) }, 'engine stdout (not protocol)'),
    });
    this.log.info({ pid: engine.pid }, 'engine started');
    this.kill = () => engine.kill();
    // A cancel or timeout that arrived while the job was being staged.
    if (this.stopping) void engine.kill();
    this.deps.onEngineStarted?.({ jobId: this.jobId, pgid: engine.pgid, attempt: this.job.attemptsMade + 1 });
    try {
      await recordEngine(this.enginePidFile, engine.pgid, jobFile);
      await this.event('engine', { pid: engine.pid, pgid: engine.pgid });
      const exit = await engine.done;
      this.log.info({ code: exit.code, signal: exit.signal }, 'engine exited');
      return exit;
    } catch (err) {
      // Bookkeeping failed (database down): no engine may run on without a worker watching it.
      await engine.kill();
      throw err;
    } finally {
      this.kill = null;
    }
  }

  private onEngineEvent(event: EngineEvent): void {
    switch (event.event) {
      case 'progress': {
        const { stage, done, total, message } = event;
        this.pushProgress({ stage, done, total, ...(message !== undefined ? { message: String(message) } : {}) });
        break;
      }
      case 'log':
        if (event.level === 'warn') this.log.warn({ engine: true }, event.message);
        else this.log.info({ engine: true }, event.message);
        this.eventInBackground('log', { level: event.level, message: event.message });
        break;
      case 'result':
        this.eventInBackground('result', { summary: event.summary as Prisma.InputJsonObject });
        break;
    }
  }

  private pushProgress(p: Omit<JobProgress, 'percent'>): void {
    // A stage this worker has no weight for (a newer engine) keeps the figure where it was.
    const fraction = overallProgress(this.weights, p.stage, p.done, p.total);
    if (fraction !== null) this.percent = Math.round(fraction * 1000) / 10;
    this.throttle.push({ ...p, percent: this.percent });
  }

  /** Throttled sink: Redis (SSE listeners), the job row, and the event log. */
  private async writeProgress(p: JobProgress): Promise<void> {
    await this.job.updateProgress(p);
    await this.deps.jobs.progress(this.jobId, p);
  }

  private async event(type: string, data: Prisma.InputJsonValue): Promise<void> {
    await this.deps.prisma.jobEvent.create({ data: { jobId: this.jobId, type, data } });
  }

  /** For events raised from the engine's stdout handler, which cannot await. */
  private eventInBackground(type: string, data: Prisma.InputJsonValue): void {
    this.event(type, data).catch((err: unknown) => this.log.warn({ err, type }, 'could not record job event'));
  }

  private async measure(
    originalPath: string,
    compressedPath: string,
    outputDir: string,
    inputs: unknown,
    options: Record<string, unknown>,
    report: Record<string, unknown>,
  ): Promise<MeasurementReport | null> {
    const measure = this.deps.measure === undefined ? await loadMeasure() : this.deps.measure;
    if (!measure) {
      this.log.warn('verify/benchmark skipped: measurement disabled for this worker');
      await this.event('log', { level: 'warn', message: 'verification and benchmark skipped: disabled for this worker' });
      return null;
    }
    this.pushProgress({ stage: 'verify', done: 0, total: 1 });
    // The engine keeps the rewritten model from before fine-tuning under this name when it fine-tunes.
    const beforeFinetune = path.join(outputDir, 'compressed-before-finetune.onnx');
    const hasBefore = await stat(beforeFinetune).then(
      () => true,
      () => false,
    );
    const accuracy = isRecord(report.accuracy) && report.accuracy.labels === true ? report.accuracy : null;
    const top1Of = (section: unknown): number | null => (isRecord(section) ? finiteNumber(section.top1) ?? null : null);
    const inputShape = Array.isArray(options.inputShape) ? (options.inputShape as number[]) : undefined;
    let measurement: MeasurementReport;
    try {
      measurement = await measure({
        originalPath,
        compressedPath,
        ...(hasBefore ? { compressedBeforeFinetunePath: beforeFinetune } : {}),
        threads: this.deps.config.ortThreads,
        batch: batchOf(inputs),
        runs: this.deps.measureRuns ?? 20,
        warmup: 3,
        seed: ENGINE_SEED,
        ...(inputShape ? { inputShape } : {}),
        ...(accuracy
          ? { top1: { original: top1Of(accuracy.original), compressed: top1Of(accuracy.finetuned) ?? top1Of(accuracy.compressed) } }
          : {}),
      });
    } catch (err) {
      if (err instanceof Error && err.name === 'VerificationError') {
        throw new ArtifactVerificationError(`the compressed model failed verification with onnxruntime-node: ${err.message}`);
      }
      throw err;
    }
    this.pushProgress({ stage: 'verify', done: 1, total: 1 });
    return measurement;
  }

  private async pollCanceled(): Promise<void> {
    try {
      const row = await this.deps.prisma.job.findUnique({ where: { id: this.jobId }, select: { status: true } });
      if (row?.status === 'canceled') await this.stop('canceled');
    } catch (err) {
      // Postgres may be restarting; the next poll (or the Redis message) will catch the cancel.
      this.log.warn({ err }, 'cancel poll failed');
    }
  }

  private async stop(reason: 'canceled' | 'timeout'): Promise<void> {
    if (this.stopping) return;
    this.stopping = reason;
    this.log.info({ reason }, 'stopping the engine');
    this.latencyAbort.abort();
    if (this.kill) await this.kill();
  }

  private stopError(): Error {
    return this.stopping === 'timeout'
      ? new JobTimeoutError(`job exceeded its time limit of ${this.deps.config.jobTimeoutMs} ms (JOB_TIMEOUT_MS) and was stopped`)
      : new JobCanceledError('job was canceled');
  }

  /** Writes the failure to the row; returns the error BullMQ should see (retryable or not). */
  private async recordFailure(err: unknown): Promise<Error> {
    const error = err instanceof Error ? err : new Error(String(err));
    const attempts = this.job.opts.attempts ?? 1;
    const retryable = !(error instanceof UnrecoverableError);
    const lastAttempt = this.job.attemptsMade + 1 >= attempts;
    const { jobs } = this.deps;

    if (error instanceof JobCanceledError) {
      // The API normally wrote `canceled` already (and its event); this covers a cancel seen only by us.
      await this.deps.jobs.cancel(this.jobId);
      await this.removeJobDir();
      this.log.info('job canceled; engine stopped');
      return error;
    }

    const category =
      error instanceof BadInputError
        ? 'bad_input'
        : error instanceof JobTimeoutError
          ? 'timeout'
          : error instanceof EngineCrashError || error instanceof ArtifactVerificationError
            ? 'engine_crash'
            : 'internal';

    if (retryable && !lastAttempt) {
      const requeued = await jobs.requeue(this.jobId, {
        category,
        message: error.message,
        event: { attempt: this.job.attemptsMade + 1, of: attempts },
      });
      if (!requeued) {
        this.log.warn({ err: error, category }, 'attempt failed after the job row left running; nothing to retry');
        return error;
      }
      this.log.warn({ err: error, category }, 'attempt failed; BullMQ will retry (job dir kept for the engine checkpoints)');
      return error;
    }

    await jobs.fail(this.jobId, { category, message: error.message });
    await this.removeJobDir();
    this.log.error({ err: error, category }, 'job failed');
    return error;
  }

  private async removeJobDir(): Promise<void> {
    await rm(this.jobDir, { recursive: true, force: true });
  }
}

/**
 * For jobs BullMQ failed without our processor getting to write the row (stalled too often after worker
 * crashes): mark the row failed so it does not stay `running` forever.
 */
export async function markFailedIfUnfinished(jobs: JobStates, jobId: string, message: string): Promise<boolean> {
  return (await jobs.fail(jobId, { category: 'internal', message })) !== null;
}
