// The worker against the real Postgres, Redis and engine: a SIGKILLed engine is retried and ends with one
// artifact, an engine exiting 1 is retried until the last attempt, bad input (exit 2) fails at once without
// retry, a timeout kills the engine's process group, a finished job is never run again, a job whose workers
// keep dying is given up, and a cancel found in the database (no Redis message) stops the engine.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { QueueEvents, type Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { CancelBus } from '../src/queue/cancel.js';
import { COMPRESSION_QUEUE, createCompressionQueue, enqueueCompressionJob, publishCancel, type CompressionJobData } from '../src/queue/index.js';
import { FileStore } from '../src/store/artifacts.js';
import { processGroupAlive } from '../src/worker/engine.js';
import { jobDirFor } from '../src/worker/jobs.js';
import { startWorker, type RunningWorker } from '../src/worker/runner.js';
import { createTestEnv, type TestEnv } from './helpers/env.js';
import { insertJob, insertModel, tinyCnn, TINY_CNN_INPUTS, zooModel } from './worker-fixtures.js';

const silent = pino({ level: 'silent' });

interface Harness {
  env: TestEnv;
  store: FileStore;
  worker: RunningWorker;
  queue: Queue<CompressionJobData>;
  events: QueueEvents;
  tenantId: string;
  started: Array<{ jobId: string; pgid: number; attempt: number }>;
  close(): Promise<void>;
}

async function harness(envOverrides: Record<string, string>, hooks: { onStart?: (i: { jobId: string; pgid: number; attempt: number }) => void } = {}): Promise<Harness> {
  const env = await createTestEnv(envOverrides);
  const started: Harness['started'] = [];
  const worker = await startWorker(env.config, {
    logger: silent,
    cancelPollMs: 200,
    onEngineStarted: (info) => {
      started.push(info);
      hooks.onStart?.(info);
    },
  });
  const connection = new Redis(env.config.redisUrl, { maxRetriesPerRequest: null });
  const queue = createCompressionQueue(connection, env.config.queuePrefix);
  // Connection options, not an instance: QueueEvents then owns (and closes) its blocking connection.
  const events = new QueueEvents(COMPRESSION_QUEUE, {
    connection: { url: env.config.redisUrl, maxRetriesPerRequest: null },
    prefix: env.config.queuePrefix,
  });
  await events.waitUntilReady();
  const tenant = await env.prisma.tenant.create({ data: { name: `worker-test-${randomBytes(3).toString('hex')}` } });
  return {
    env,
    store: new FileStore(env.config.storageDir),
    worker,
    queue,
    events,
    tenantId: tenant.id,
    started,
    async close() {
      await worker.close();
      await events.close();
      await queue.close();
      await connection.quit();
      await env.cleanup();
    },
  };
}

/** Enqueues and waits for BullMQ's final outcome (retries included). */
async function runToEnd(h: Harness, jobId: string): Promise<{ ok: boolean; value: unknown }> {
  await enqueueCompressionJob(h.queue, { jobId, tenantId: h.tenantId });
  const job = await h.queue.getJob(jobId);
  assert.ok(job, 'job was enqueued');
  try {
    return { ok: true, value: await job.waitUntilFinished(h.events) };
  } catch (err) {
    return { ok: false, value: (err as Error).message };
  }
}

/** Progress the engine itself reported (the worker's own 'staging' comes before the engine runs). */
function isEngineStage(progress: unknown): boolean {
  const stage = (progress as { stage?: unknown }).stage;
  return typeof stage === 'string' && stage !== 'staging';
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

describe('worker with the real engine', () => {
  let h: Harness;
  let tiny: string;
  /** A model whose rewrite takes many seconds: the engine is surely still running when we act. */
  let slow: string;
  /** The first engine of this job id is killed with SIGKILL as soon as it is spawned. */
  let crashJobId: string | null = null;

  before(async () => {
    tiny = await tinyCnn();
    slow = await zooModel('resnet18', 64);
    h = await harness({}, {
      onStart: (info) => {
        if (info.jobId === crashJobId && info.attempt === 1) process.kill(-info.pgid, 'SIGKILL');
      },
    });
  });
  after(async () => {
    await h?.close();
  });

  it('retries an engine killed mid-job and ends with exactly one artifact', async () => {
    const modelId = await insertModel(h.env.prisma, h.store, h.tenantId, tiny, TINY_CNN_INPUTS);
    const jobId = await insertJob(h.env.prisma, h.tenantId, modelId, { rule: 'ratio', ratio: 0.5 });
    crashJobId = jobId;
    const outcome = await runToEnd(h, jobId);
    assert.ok(outcome.ok, `job should succeed after the retry: ${String(outcome.value)}`);
    assert.equal((outcome.value as { status: string }).status, 'succeeded');

    const engines = h.started.filter((s) => s.jobId === jobId);
    assert.deepEqual(
      engines.map((e) => e.attempt),
      [1, 2],
      'one engine per attempt',
    );
    for (const e of engines) assert.equal(processGroupAlive(e.pgid), false, `engine group ${e.pgid} still alive`);

    const row = await h.env.prisma.job.findUniqueOrThrow({ where: { id: jobId }, include: { artifact: true, events: true } });
    assert.equal(row.status, 'succeeded');
    assert.equal(row.attempts, 2);
    assert.equal(row.progress, 1);
    assert.ok(row.finishedAt && row.startedAt && row.finishedAt >= row.startedAt);
    const retry = row.events.find((e) => e.type === 'retry');
    assert.ok(retry, 'a retry event was recorded');
    assert.equal((retry.data as { category: string }).category, 'engine_crash');
    assert.match((retry.data as { message: string }).message, /SIGKILL/);

    assert.equal(await h.env.prisma.artifact.count({ where: { jobId } }), 1);
    const artifact = row.artifact!;
    const bytes = await readFile(h.store.pathFor(artifact.storageKey));
    const { createHash } = await import('node:crypto');
    assert.equal(createHash('sha256').update(bytes).digest('hex'), artifact.sha256);
    assert.equal(BigInt(bytes.length), artifact.bytes);

    const report = row.report as Record<string, unknown>;
    assert.ok(Array.isArray(report.layers) && report.layers.length > 0, 'per-layer plan in the stored report');
    const metrics = row.metrics as Record<string, number>;
    assert.ok(metrics.params_after! < metrics.params_before!, `params ${metrics.params_before} → ${metrics.params_after}`);
    assert.ok(metrics.latency_ms_before! > 0, 'onnxruntime-node latency measured');
    const metricRows = await h.env.prisma.metric.count({ where: { jobId } });
    assert.equal(metricRows, Object.keys(metrics).length);

    const progressEvents = row.events.filter((e) => e.type === 'progress').map((e) => (e.data as { stage: string }).stage);
    for (const stage of ['analyze', 'plan', 'rewrite', 'write', 'verify']) {
      assert.ok(progressEvents.includes(stage), `progress for stage ${stage} relayed (got ${[...new Set(progressEvents)].join(',')})`);
    }
    assert.equal(await exists(jobDirFor(h.env.config.storageDir, jobId)), false, 'job dir removed when the job ended');
  });

  it('fails bad input at once with the engine message and no retry', async () => {
    const junk = path.join(os.tmpdir(), `not-a-model-${randomBytes(4).toString('hex')}.onnx`);
    await writeFile(junk, randomBytes(4096));
    const modelId = await insertModel(h.env.prisma, h.store, h.tenantId, junk);
    const jobId = await insertJob(h.env.prisma, h.tenantId, modelId, { rule: 'ratio', ratio: 0.5 });
    const outcome = await runToEnd(h, jobId);
    assert.equal(outcome.ok, false);

    const row = await h.env.prisma.job.findUniqueOrThrow({ where: { id: jobId } });
    assert.equal(row.status, 'failed');
    assert.equal(row.errorCategory, 'bad_input');
    assert.equal(row.attempts, 1, 'bad input is never retried');
    assert.ok(row.errorMessage && row.errorMessage.length > 0 && !row.errorMessage.includes('Traceback'), row.errorMessage ?? '');
    assert.equal(outcome.value, row.errorMessage, 'BullMQ records the engine message too');
    const job = await h.queue.getJob(jobId);
    assert.equal(job?.attemptsMade, 1);
    assert.equal(await h.env.prisma.artifact.count({ where: { jobId } }), 0);
    assert.equal(await exists(jobDirFor(h.env.config.storageDir, jobId)), false);
  });

  it('never runs a job again once the database says it finished', async () => {
    const modelId = await insertModel(h.env.prisma, h.store, h.tenantId, tiny, TINY_CNN_INPUTS);
    const jobId = await insertJob(h.env.prisma, h.tenantId, modelId, { rule: 'ratio', ratio: 0.5 }, 'succeeded');
    const outcome = await runToEnd(h, jobId);
    assert.ok(outcome.ok);
    assert.deepEqual(outcome.value, { status: 'skipped', reason: 'job is succeeded' });
    assert.equal(h.started.filter((s) => s.jobId === jobId).length, 0, 'no engine was started');
    const row = await h.env.prisma.job.findUniqueOrThrow({ where: { id: jobId } });
    assert.equal(row.attempts, 0);
  });

  it('gives up on a job whose earlier workers all died, instead of running it forever', async () => {
    const modelId = await insertModel(h.env.prisma, h.store, h.tenantId, tiny, TINY_CNN_INPUTS);
    const jobId = await insertJob(h.env.prisma, h.tenantId, modelId, { rule: 'ratio', ratio: 0.5 });
    // Five claims recorded (BullMQ allows 3 attempts, plus 2 lost with dead workers), none finished.
    await h.env.prisma.job.update({ where: { id: jobId }, data: { status: 'running', attempts: 5 } });
    const outcome = await runToEnd(h, jobId);
    assert.equal(outcome.ok, false);
    assert.match(String(outcome.value), /started 5 times without finishing/);
    const row = await h.env.prisma.job.findUniqueOrThrow({ where: { id: jobId } });
    assert.equal(row.status, 'failed');
    assert.equal(row.errorCategory, 'internal');
    assert.equal(row.attempts, 5, 'not claimed again');
    assert.equal(h.started.filter((s) => s.jobId === jobId).length, 0, 'no engine was started');
  });

  it('stops the engine when the row is canceled in the database, without a Redis message', async () => {
    const modelId = await insertModel(h.env.prisma, h.store, h.tenantId, slow);
    const jobId = await insertJob(h.env.prisma, h.tenantId, modelId, { rule: 'ratio', ratio: 0.5 });
    const engineUp = new Promise<number>((resolve) => {
      const onProgress = (job: { data: CompressionJobData }, progress: unknown): void => {
        if (job.data.jobId !== jobId || !isEngineStage(progress)) return;
        h.worker.worker.off('progress', onProgress);
        resolve(h.started.find((s) => s.jobId === jobId)!.pgid);
      };
      h.worker.worker.on('progress', onProgress);
    });
    const finished = runToEnd(h, jobId);
    const pgid = await engineUp;
    // What POST /v1/jobs/:id/cancel writes, minus its Redis message.
    await h.env.prisma.job.update({
      where: { id: jobId },
      data: { status: 'canceled', finishedAt: new Date(), errorCategory: 'canceled', errorMessage: 'canceled by the client' },
    });
    const outcome = await finished;
    assert.equal(outcome.ok, false);
    assert.equal(processGroupAlive(pgid), false, 'engine process group is gone');
    const row = await h.env.prisma.job.findUniqueOrThrow({ where: { id: jobId } });
    assert.equal(row.status, 'canceled');
    assert.equal(row.errorCategory, 'canceled');
    assert.equal(row.attempts, 1, 'a canceled job is not retried');
    assert.equal(await h.env.prisma.artifact.count({ where: { jobId } }), 0);
  });
});

describe('worker job timeout', () => {
  it('kills the engine group and fails the job with category timeout, without retry', async () => {
    const slow = await zooModel('resnet18', 64);
    // Its rewrite alone takes several seconds of CPU, so the limit always hits while the engine runs.
    const h = await harness({ JOB_TIMEOUT_MS: '2000' });
    try {
      const modelId = await insertModel(h.env.prisma, h.store, h.tenantId, slow);
      const jobId = await insertJob(h.env.prisma, h.tenantId, modelId, { rule: 'ratio', ratio: 0.5 });
      const outcome = await runToEnd(h, jobId);
      assert.equal(outcome.ok, false);
      assert.match(String(outcome.value), /time limit of 2000 ms/);
      const row = await h.env.prisma.job.findUniqueOrThrow({ where: { id: jobId } });
      assert.equal(row.status, 'failed');
      assert.equal(row.errorCategory, 'timeout');
      assert.equal(row.attempts, 1);
      const engines = h.started.filter((s) => s.jobId === jobId);
      assert.equal(engines.length, 1);
      assert.equal(processGroupAlive(engines[0]!.pgid), false);
    } finally {
      await h.close();
    }
  });
});

describe('worker with an engine that exits 1', () => {
  it('retries the crash with backoff and fails as engine_crash after the last attempt', async () => {
    // A worker whose ENGINE_DIR holds no engine: the real interpreter exits 1 ("No module named tuckerize"),
    // the way a broken deployment or an engine bug crashes — never an input problem.
    const emptyEngineDir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-no-engine-'));
    const h = await harness({ ENGINE_DIR: emptyEngineDir });
    try {
      const modelId = await insertModel(h.env.prisma, h.store, h.tenantId, await tinyCnn(), TINY_CNN_INPUTS);
      const jobId = await insertJob(h.env.prisma, h.tenantId, modelId, { rule: 'ratio', ratio: 0.5 });
      const outcome = await runToEnd(h, jobId);
      assert.equal(outcome.ok, false);
      assert.match(String(outcome.value), /engine exited with code 1: .*No module named tuckerize/);

      const row = await h.env.prisma.job.findUniqueOrThrow({ where: { id: jobId }, include: { events: { orderBy: { id: 'asc' } } } });
      assert.equal(row.status, 'failed');
      assert.equal(row.errorCategory, 'engine_crash');
      assert.equal(row.attempts, 3, 'all three BullMQ attempts ran');
      assert.equal(h.started.filter((s) => s.jobId === jobId).length, 3);
      const retries = row.events.filter((e) => e.type === 'retry').map((e) => (e.data as { attempt: number }).attempt);
      assert.deepEqual(retries, [1, 2], 'a retry event after each attempt but the last');
      assert.equal((await h.queue.getJob(jobId))?.attemptsMade, 3);
      assert.equal(await exists(jobDirFor(h.env.config.storageDir, jobId)), false, 'job dir removed once the job failed for good');
    } finally {
      await h.close();
      await rm(emptyEngineDir, { recursive: true, force: true });
    }
  });
});

describe('cancel bus', () => {
  it('delivers a published job id to that job’s listeners only, until unsubscribed', async () => {
    const prefix = `tkt-cancel-${randomBytes(4).toString('hex')}`;
    const errors: Error[] = [];
    const bus = await CancelBus.connect('redis://127.0.0.1:6379', prefix, (err) => errors.push(err));
    const publisher = new Redis('redis://127.0.0.1:6379');
    try {
      const heard: string[] = [];
      const stopA = bus.on('job-a', () => heard.push('a'));
      bus.on('job-b', () => heard.push('b'));
      const delivered = new Promise<void>((resolve) => bus.on('job-a', () => resolve()));
      await publishCancel(publisher, prefix, 'job-a');
      await delivered;
      assert.deepEqual(heard, ['a']);

      stopA();
      const second = new Promise<void>((resolve) => bus.on('job-b', () => resolve()));
      await publishCancel(publisher, prefix, 'job-a'); // nobody listens for a any more
      await publishCancel(publisher, prefix, 'job-b');
      await second; // messages on one channel arrive in order: job-a's has been handled by now
      assert.deepEqual(heard, ['a', 'b']);
      assert.deepEqual(errors, []);
    } finally {
      publisher.disconnect();
      await bus.close();
    }
  });
});
