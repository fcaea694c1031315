// One fault scenario: a fresh database (on the machine's PostgreSQL or a throwaway cluster), a Redis
// (the machine's with a unique prefix, or a throwaway one), the API in-process and listening on loopback,
// worker processes spawned from the real entry point, and a teardown that removes all of it even when the
// test failed half-way: workers and orphaned engines killed, the API closed, database and dirs dropped.
import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { buildApp } from '../../src/api/app.js';
import { loadConfig, type Config } from '../../src/config.js';
import { createPrisma, type PrismaClient } from '../../src/db/client.js';
import { migrate } from '../../src/db/migrate.js';
import { createTestEnv, createTestKey } from '../helpers/env.js';
import { killEngines, spawnWorker, spawnWorkerWithStallSettings, Teardown, type ServiceProcess } from './processes.js';
import type { ThrowawayPostgres } from './postgres.js';
import { waitUntil } from './wait.js';

const run = promisify(execFile);
/** Generous bound for one HTTP call: the point is that nothing hangs, not how fast it answers. */
const HTTP_TIMEOUT_MS = 15_000;
const WORKER_READY_TIMEOUT_MS = 60_000;

export interface ScenarioOptions {
  /** A throwaway cluster to put the database on; default: the machine's PostgreSQL. */
  postgres?: ThrowawayPostgres;
  /** Default: the machine's Redis (with a unique prefix). */
  redisUrl?: string;
}

export interface HttpResult {
  status: number;
  body: Record<string, unknown>;
  /** Milliseconds from send to the full response, for the report (never asserted). */
  ms: number;
}

export class Scenario {
  readonly workers: ServiceProcess[] = [];
  baseUrl = '';
  apiKey = '';

  private constructor(
    readonly teardown: Teardown,
    readonly config: Config,
    /** Config as environment variables, for the worker processes. */
    readonly env: Record<string, string>,
    readonly prisma: PrismaClient,
  ) {}

  static async create(options: ScenarioOptions = {}): Promise<Scenario> {
    const settings: Record<string, string> = {
      // The worker's logs are the failure message of a scenario; info shows every job step.
      LOG_LEVEL: 'info',
      ENGINE_THREADS: '1',
      ORT_THREADS: '1',
      WORKER_CONCURRENCY: '1',
      ...(options.redisUrl ? { REDIS_URL: options.redisUrl } : {}),
    };
    const teardown = new Teardown();
    try {
      let config: Config;
      let prisma: PrismaClient;
      if (options.postgres) {
        const database = `tuckerize_fault_${randomBytes(5).toString('hex')}`;
        const databaseUrl = await options.postgres.createDatabase(database);
        const storageDir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-fault-'));
        teardown.defer('remove the storage dir', () => rm(storageDir, { recursive: true, force: true }));
        config = loadConfig({
          ...settings,
          DATABASE_URL: databaseUrl,
          QUEUE_PREFIX: `tkf-${randomBytes(5).toString('hex')}`,
          STORAGE_DIR: storageDir,
        });
        await migrate(databaseUrl);
        prisma = createPrisma(databaseUrl);
        teardown.defer('disconnect prisma', () => prisma.$disconnect());
      } else {
        const env = await createTestEnv(settings);
        teardown.defer('drop the test database', () => env.cleanup());
        config = env.config;
        prisma = env.prisma;
      }
      const env: Record<string, string> = {
        ...settings,
        DATABASE_URL: config.databaseUrl,
        REDIS_URL: config.redisUrl,
        QUEUE_PREFIX: config.queuePrefix,
        STORAGE_DIR: config.storageDir,
      };
      // Registered before any process starts, so it runs after they are all dead: no engine survives.
      teardown.defer('kill orphaned engines', () => killEngines(config.storageDir));
      // The in-process API stays quiet; the worker processes log at info for failure messages.
      return new Scenario(teardown, { ...config, logLevel: 'silent' }, env, prisma);
    } catch (err) {
      await teardown.run().catch(() => undefined);
      throw err;
    }
  }

  /** Builds the API on this scenario's config and listens on an ephemeral loopback port. */
  async startApi(): Promise<void> {
    // The per-upload engine analysis is not under test here and costs a Python start per model.
    const app = await buildApp(this.config, { analyzeModels: false });
    this.teardown.defer('close the API', () => app.close());
    await app.listen({ port: 0, host: '127.0.0.1' });
    const address = app.server.address();
    if (address === null || typeof address === 'string') throw new Error('API did not report a TCP address');
    this.baseUrl = `http://127.0.0.1:${address.port}`;
    this.apiKey = await createTestKey(this.prisma, `fault-${randomBytes(3).toString('hex')}`);
  }

  /** Starts `src/worker.ts` as a child process and waits for its "worker ready" log line. */
  async startWorker(name: string, stall?: { lockDurationMs: number; stalledIntervalMs: number }): Promise<ServiceProcess> {
    const worker = stall ? spawnWorkerWithStallSettings(name, this.env, stall) : spawnWorker(name, this.env);
    this.workers.push(worker);
    this.teardown.defer(`kill ${name}`, () => worker.kill('SIGKILL'));
    await worker.waitForOutput(/"msg":"worker ready"/, 'its ready line', WORKER_READY_TIMEOUT_MS);
    return worker;
  }

  /** All worker output, for assertion messages. */
  workerLogs(): string {
    return this.workers.map((w) => `--- ${w.name} (pid ${w.pid}, ${w.alive ? 'alive' : JSON.stringify(w.exitStatus)}) ---\n${w.output().slice(-6000)}`).join('\n');
  }

  async http(method: string, urlPath: string, body?: unknown, headers: Record<string, string> = {}): Promise<HttpResult> {
    const started = performance.now();
    const response = await fetch(this.baseUrl + urlPath, {
      method,
      headers: {
        authorization: `Bearer ${this.apiKey}`,
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...headers,
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
    });
    const text = await response.text();
    let parsed: Record<string, unknown> = {};
    try {
      parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
    } catch {
      parsed = { raw: text };
    }
    return { status: response.status, body: parsed, ms: Math.round(performance.now() - started) };
  }

  async upload(kind: 'models' | 'datasets', file: string): Promise<string> {
    const form = new FormData();
    form.append('file', new Blob([await readFile(file)]), path.basename(file));
    const response = await fetch(`${this.baseUrl}/v1/${kind}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.apiKey}` },
      body: form,
      signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
    });
    const body = (await response.json()) as { id?: string };
    if (response.status !== 201 || typeof body.id !== 'string') {
      throw new Error(`upload of ${file} to /v1/${kind} answered ${response.status}: ${JSON.stringify(body)}`);
    }
    return body.id;
  }

  async createJob(request: Record<string, unknown>): Promise<string> {
    const res = await this.http('POST', '/v1/jobs', request);
    if (res.status !== 202 || typeof res.body.id !== 'string') {
      throw new Error(`POST /v1/jobs answered ${res.status}: ${JSON.stringify(res.body)}`);
    }
    return res.body.id;
  }

  /** Waits for the job row to reach a terminal status; returns it. */
  async waitForJobEnd(jobId: string, timeoutMs: number): Promise<string> {
    try {
      return await waitUntil(
        `job ${jobId} to finish`,
        async () => {
          const row = await this.prisma.job.findUnique({ where: { id: jobId }, select: { status: true } });
          return row && ['succeeded', 'failed', 'canceled'].includes(row.status) ? row.status : false;
        },
        { timeoutMs, intervalMs: 250 },
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${await this.jobTrace(jobId)}\n${this.workerLogs()}`);
    }
  }

  /** The job's event log as text lines, for assertion messages. */
  async jobTrace(jobId: string): Promise<string> {
    const events = await this.prisma.jobEvent.findMany({ where: { jobId }, orderBy: { id: 'asc' } }).catch(() => []);
    return events.map((e) => `${e.createdAt.toISOString()} ${e.type} ${JSON.stringify(e.data)}`).join('\n');
  }

  /** Messages of the engine's log events of a job, in order. */
  async engineLogs(jobId: string): Promise<string[]> {
    const events = await this.prisma.jobEvent.findMany({ where: { jobId, type: 'log' }, orderBy: { id: 'asc' } });
    return events.map((e) => String((e.data as { message?: unknown }).message ?? ''));
  }

  /** Process groups of the engines the workers started for this job (from their `engine` events). */
  async enginePgids(jobId: string): Promise<number[]> {
    const events = await this.prisma.jobEvent.findMany({ where: { jobId, type: 'engine' }, orderBy: { id: 'asc' } });
    return events.map((e) => Number((e.data as { pgid?: unknown }).pgid));
  }

  jobDir(jobId: string): string {
    return path.join(this.config.storageDir, 'jobs', jobId);
  }

  /**
   * The crash-safety invariant: the job succeeded, with exactly one artifact row, whose object is in the
   * store with the recorded hash and size, and the store holds nothing else besides the uploads (no second
   * copy, no temp file).
   */
  async assertSucceededWithOneArtifact(jobId: string): Promise<void> {
    const row = await this.prisma.job.findUniqueOrThrow({ where: { id: jobId }, include: { artifact: true } });
    const context = async () => `\n${await this.jobTrace(jobId)}\n${this.workerLogs()}`;
    if (row.status !== 'succeeded') throw new Error(`job ${jobId} is ${row.status} (${row.errorCategory}: ${row.errorMessage})${await context()}`);
    const artifacts = await this.prisma.artifact.findMany({ where: { jobId } });
    if (artifacts.length !== 1) throw new Error(`job ${jobId} has ${artifacts.length} artifact rows, expected exactly 1`);
    const artifact = artifacts[0]!;
    const bytes = await readFile(path.join(this.config.storageDir, artifact.storageKey));
    const sha = createHash('sha256').update(bytes).digest('hex');
    if (sha !== artifact.sha256 || BigInt(bytes.length) !== artifact.bytes) {
      throw new Error(`stored artifact ${artifact.storageKey} has sha256 ${sha} / ${bytes.length} bytes; the row says ${artifact.sha256} / ${artifact.bytes}`);
    }
    const referenced = new Set<string>();
    for (const m of await this.prisma.onnxModel.findMany({ select: { storageKey: true } })) referenced.add(m.storageKey);
    for (const d of await this.prisma.dataset.findMany({ select: { storageKey: true } })) referenced.add(d.storageKey);
    for (const a of await this.prisma.artifact.findMany({ select: { storageKey: true } })) referenced.add(a.storageKey);
    const stored = await listFiles(this.config.storageDir, 'objects');
    const unreferenced = stored.filter((key) => !referenced.has(key));
    if (unreferenced.length > 0) throw new Error(`store objects no row references: ${unreferenced.join(', ')}`);
    const temps = await listFiles(this.config.storageDir, 'tmp');
    if (temps.length > 0) throw new Error(`temp files left in the store: ${temps.join(', ')}`);
  }

  async close(): Promise<void> {
    await this.teardown.run();
  }
}

/** Store-relative paths of the files under root/sub. */
async function listFiles(root: string, sub: string): Promise<string[]> {
  try {
    const entries = await readdir(path.join(root, sub), { recursive: true, withFileTypes: true });
    return entries.filter((e) => e.isFile()).map((e) => path.relative(root, path.join(e.parentPath, e.name))).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

const DATASET_SCRIPT = `
import sys, numpy as np
rng = np.random.default_rng(0)
# 3x32x32 uint8 images with labels: what the tiny CNN fixture takes; 512 of them give ~28 steps per epoch
# at batch 16, so a checkpoint (every epoch end) lands about every 28 steps.
np.savez(sys.argv[1], x=rng.integers(0, 256, (512, 3, 32, 32), dtype=np.uint8), y=rng.integers(0, 10, 512))
`;

/** A labelled .npz that fits the tiny CNN of test/worker-fixtures.ts, written into `dir`. */
export async function tinyDataset(dir: string): Promise<string> {
  const file = path.join(dir, 'tiny-images.npz');
  await run('/usr/bin/python3', ['-c', DATASET_SCRIPT, file], { timeout: 120_000 });
  return file;
}

/** BullMQ's state of a job in this scenario's queue ('completed', 'failed', ..., or 'missing'). */
export async function bullState(scenario: Scenario, jobId: string): Promise<string> {
  const { Queue } = await import('bullmq');
  const { COMPRESSION_QUEUE } = await import('../../src/queue/index.js');
  const queue = new Queue(COMPRESSION_QUEUE, {
    connection: { url: scenario.config.redisUrl, maxRetriesPerRequest: 1 },
    prefix: scenario.config.queuePrefix,
  });
  try {
    const job = await queue.getJob(jobId);
    return job ? await job.getState() : 'missing';
  } finally {
    await queue.close();
  }
}
