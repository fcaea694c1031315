// Beyond one machine, end to end: the API and the workers share nothing but PostgreSQL, Redis and an S3
// bucket (s3rver). Each has its own local directory. A fine-tuning job starts on worker A, which is killed
// once its checkpoint reached the bucket; worker B, on another directory, restores the checkpoints and
// finishes the job. The artifact is downloaded through the API (whole, by range, and by presigned URL), the
// job.succeeded webhook sent by the worker is verified with the standardwebhooks package, and Debian's
// Prometheus scrapes the API and the workers and answers every query of the Grafana dashboard.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import type { FastifyInstance } from 'fastify';
import { Webhook as StandardWebhook } from 'standardwebhooks';
import { buildApp } from '../src/api/app.js';
import { loadConfig } from '../src/config.js';
import { ApiClient } from '../src/demo/client.js';
import { jobDirFor } from '../src/worker/stage-inputs.js';
import { freePort } from './fault-support/ports.js';
import { REPO_ROOT, spawnWorker, type ServiceProcess } from './fault-support/processes.js';
import { waitUntil } from './fault-support/wait.js';
import { createTestEnv, createTestKey, type TestEnv } from './helpers/env.js';
import { createFixtures, type Fixtures } from './helpers/fixtures.js';
import { startS3, type TestS3 } from './helpers/s3.js';

interface Dashboard {
  panels: { title: string; targets: { expr: string }[] }[];
}

describe('S3 store, split hosts, webhooks from a worker, and the ops dashboard', () => {
  let s3: TestS3;
  let env: TestEnv;
  let fx: Fixtures;
  let app: FastifyInstance;
  let client: ApiClient;
  let key: string;
  let baseUrl: string;
  let dirs: { api: string; a: string; b: string; prom: string };
  let bucket: S3Client;
  let receiver: http.Server;
  const received: { headers: Record<string, string>; body: string }[] = [];
  let workerA: ServiceProcess | undefined;
  let workerB: ServiceProcess | undefined;
  let prometheus: ChildProcess | undefined;
  let promUrl: string;
  const ports = { a: 0, b: 0 };

  const bucketKeys = async (prefix: string): Promise<string[]> => {
    const page = await bucket.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: `tz/${prefix}` }));
    return (page.Contents ?? []).map((o) => o.Key!.slice(3));
  };

  const workerEnv = (workDir: string, metricsPort: number): Record<string, string> => ({
    DATABASE_URL: env.config.databaseUrl,
    REDIS_URL: env.config.redisUrl,
    QUEUE_PREFIX: env.config.queuePrefix,
    ...s3.env,
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    WORK_DIR: workDir,
    STORAGE_DIR: path.join(workDir, 'not-used'),
    HOST: '127.0.0.1',
    WORKER_METRICS_PORT: String(metricsPort),
    LOG_LEVEL: 'info',
    ENGINE_THREADS: '1',
    CHECKPOINT_SYNC_MS: '200',
    WORKER_LOCK_DURATION_MS: '5000',
    WORKER_STALLED_INTERVAL_MS: '2000',
    WEBHOOK_ALLOW_PRIVATE: 'true',
  });

  before(async () => {
    s3 = await startS3();
    const root = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-hosts-'));
    dirs = { api: path.join(root, 'api'), a: path.join(root, 'worker-a'), b: path.join(root, 'worker-b'), prom: path.join(root, 'prometheus') };
    fx = await createFixtures();
    env = await createTestEnv({ ...s3.env, WORK_DIR: dirs.api, WEBHOOK_ALLOW_PRIVATE: 'true' });
    bucket = new S3Client({ endpoint: s3.endpoint, forcePathStyle: true, region: 'us-east-1' });
    app = await buildApp(env.config, { prisma: env.prisma, analyzeModels: false });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const apiPort = (app.server.address() as AddressInfo).port;
    baseUrl = `http://127.0.0.1:${apiPort}`;
    key = await createTestKey(env.prisma, 'hosts');
    client = new ApiClient(baseUrl, key);

    receiver = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.push({ headers: req.headers as Record<string, string>, body: Buffer.concat(chunks).toString('utf8') });
        res.statusCode = 204;
        res.end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));

    ports.a = await freePort();
    ports.b = await freePort();
    const promPort = await freePort();
    promUrl = `http://127.0.0.1:${promPort}`;
    const promConfig = path.join(root, 'prometheus.yml');
    await writeFile(
      promConfig,
      [
        'global: {scrape_interval: 1s, evaluation_interval: 1s}',
        'scrape_configs:',
        `  - {job_name: api, static_configs: [{targets: ["127.0.0.1:${apiPort}"]}]}`,
        `  - {job_name: worker, static_configs: [{targets: ["127.0.0.1:${ports.a}", "127.0.0.1:${ports.b}"]}]}`,
        '',
      ].join('\n'),
    );
    prometheus = spawn('prometheus', [
      `--config.file=${promConfig}`, `--storage.tsdb.path=${dirs.prom}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn',
    ], { stdio: 'ignore' });
    await waitUntil('prometheus to be ready', async () => (await fetch(`${promUrl}/-/ready`).catch(() => null))?.ok === true, { timeoutMs: 60_000 });
  });

  after(async () => {
    await workerA?.kill('SIGKILL');
    await workerB?.stop();
    prometheus?.kill('SIGTERM');
    await app?.close();
    await new Promise((resolve) => receiver?.close(resolve));
    bucket?.destroy();
    await env?.cleanup();
    await s3?.close();
    await fx?.cleanup();
    if (dirs) await rm(path.dirname(dirs.api), { recursive: true, force: true });
  });

  test('a job started on worker A resumes on worker B from the checkpoints in the bucket', async () => {
    const webhook = await client.request<{ id: string; secret: string }>('POST', '/v1/webhooks', {
      url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hooks`,
      events: ['job.succeeded'],
    });
    const model = await client.uploadModel(fx.tiny);
    const form = new FormData();
    form.set('file', new Blob([await readFile(fx.imagesNpz)]), 'images.npz');
    const datasetRes = await fetch(`${baseUrl}/v1/datasets`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
    assert.equal(datasetRes.status, 201, await datasetRes.clone().text());
    const dataset = (await datasetRes.json()) as { id: string };
    assert.deepEqual((await bucketKeys('objects/')).length, 2, 'model and dataset are in the bucket');

    workerA = spawnWorker('worker-a', workerEnv(dirs.a, ports.a));
    await workerA.waitForOutput(/worker ready/, 'worker ready', 120_000);
    const job = await client.request<{ id: string }>('POST', '/v1/jobs', {
      modelId: model.id,
      datasetId: dataset.id,
      options: { rule: 'ratio', ratio: 0.5, finetune: { steps: 60, batchSize: 4 } },
    });

    // Worker A fine-tunes; once its checkpoint is in the bucket, the host "dies" (worker and engine).
    await waitUntil('the fine-tuning checkpoint in the bucket', async () => (await bucketKeys(`checkpoints/${job.id}/`)).some((k) => k.endsWith('/finetune.ckpt')), {
      timeoutMs: 300_000,
    });
    await workerA.kill('SIGKILL');
    const pidFile = path.join(jobDirFor(dirs.a, job.id), 'engine.pid');
    const { pgid } = JSON.parse(await readFile(pidFile, 'utf8')) as { pgid: number };
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }

    workerB = spawnWorker('worker-b', workerEnv(dirs.b, ports.b));
    const final = await client.followJob(job.id, () => undefined);
    assert.equal(final.status, 'succeeded', JSON.stringify(final.error));
    const restoredLine = workerB.output().split('\n').find((line) => line.includes('engine checkpoints restored from the store'));
    assert.ok(restoredLine, 'worker B restored the checkpoints');
    assert.deepEqual((JSON.parse(restoredLine) as { restored: string[] }).restored.sort(), ['finetune.ckpt', 'rewrite.onnx', 'rewrite.plan.json']);
    assert.match(workerB.output(), /fine-tuning resumed from step/);
    assert.equal((await client.request<{ attempts: number }>('GET', `/v1/jobs/${job.id}`)).attempts, 2);
    await waitUntil('the checkpoints to be deleted', async () => (await bucketKeys(`checkpoints/${job.id}/`)).length === 0, { timeoutMs: 10_000 });

    // Nothing travelled by path: B fetched the inputs from the bucket into its own cache; the API never had a job dir.
    const { sha256 } = await client.request<{ sha256: string }>('GET', `/v1/models/${model.id}`);
    const cachedByB = await readdir(path.join(dirs.b, 'cache', 'objects'), { recursive: true });
    assert.ok(cachedByB.includes(path.join(sha256.slice(0, 2), sha256)), 'the model was downloaded into B\'s cache');
    await assert.rejects(readdir(path.join(dirs.api, 'jobs')), { code: 'ENOENT' });

    // The report names the device the engine ran on.
    const report = await client.request<{ device: { name: string; type: string }; timings: Record<string, number> }>('GET', `/v1/jobs/${job.id}/report`);
    assert.equal(report.device.type, 'cpu');
    // B planned and rewrote nothing itself: both came from A's checkpoint (the engine reports them as 0 s).
    assert.equal(report.timings.plan, 0);
    assert.equal(report.timings.rewrite, 0);

    // Download: whole, a range, and a presigned redirect from an API configured for it.
    const auth = { authorization: `Bearer ${key}` };
    const whole = await fetch(`${baseUrl}/v1/jobs/${job.id}/artifact`, { headers: auth });
    assert.equal(whole.status, 200);
    assert.equal(whole.headers.get('accept-ranges'), 'bytes');
    const bytes = Buffer.from(await whole.arrayBuffer());
    assert.equal(createHash('sha256').update(bytes).digest('hex'), whole.headers.get('x-content-sha256'));
    const part = await fetch(`${baseUrl}/v1/jobs/${job.id}/artifact`, { headers: { ...auth, range: 'bytes=10-99' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 10-99/${bytes.length}`);
    assert.ok(Buffer.from(await part.arrayBuffer()).equals(bytes.subarray(10, 100)));
    const beyond = await fetch(`${baseUrl}/v1/jobs/${job.id}/artifact`, { headers: { ...auth, range: `bytes=${bytes.length}-` } });
    assert.equal(beyond.status, 416);
    assert.equal(beyond.headers.get('content-range'), `bytes */${bytes.length}`);
    const presigningConfig = loadConfig({ ...Object.fromEntries(Object.entries(process.env)), DATABASE_URL: env.config.databaseUrl,
      REDIS_URL: env.config.redisUrl, QUEUE_PREFIX: env.config.queuePrefix, ...s3.env, WORK_DIR: dirs.api, S3_PRESIGN_DOWNLOADS: 'true', LOG_LEVEL: 'silent' });
    const presigning = await buildApp(presigningConfig, { prisma: env.prisma, analyzeModels: false });
    try {
      const redirect = await presigning.inject({ method: 'GET', url: `/v1/jobs/${job.id}/artifact`, headers: auth });
      assert.equal(redirect.statusCode, 302);
      const location = String(redirect.headers.location);
      assert.ok(location.startsWith(`${s3.endpoint}/${s3.bucket}/tz/objects/`), location);
      assert.ok(Buffer.from(await (await fetch(location)).arrayBuffer()).equals(bytes));
    } finally {
      await presigning.close();
    }

    // The job.succeeded webhook, sent by worker B, signed with the endpoint's secret.
    await waitUntil('the job.succeeded webhook', () => received.length > 0, { timeoutMs: 30_000 });
    const payload = new StandardWebhook(webhook.secret).verify(received[0]!.body, received[0]!.headers) as { type: string; data: { job: { id: string } } };
    assert.equal(payload.type, 'job.succeeded');
    assert.equal(payload.data.job.id, job.id);
  });

  test('Prometheus scrapes the API and the worker; every dashboard query returns series', async () => {
    const check = spawnSync('promtool', ['check', 'config', path.join(REPO_ROOT, 'deploy', 'prometheus.yml')], { encoding: 'utf8' });
    assert.equal(check.status, 0, check.stdout + check.stderr);
    // Client errors for the HTTP error panel.
    assert.equal((await fetch(`${baseUrl}/v1/jobs`, { headers: { authorization: 'Bearer tk_wrong_key' } })).status, 401);

    const dashboard = JSON.parse(await readFile(path.join(REPO_ROOT, 'deploy', 'grafana', 'dashboards', 'tuckerize.json'), 'utf8')) as Dashboard;
    const queries = dashboard.panels.flatMap((p) => p.targets.map((t) => ({ panel: p.title, expr: t.expr })));
    assert.ok(queries.length >= 9);
    const query = async (expr: string): Promise<{ metric: Record<string, string>; value: [number, string] }[]> => {
      const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
      const body = (await res.json()) as { status: string; error?: string; data: { result: { metric: Record<string, string>; value: [number, string] }[] } };
      assert.equal(body.status, 'success', `${expr}: ${body.error}`);
      return body.data.result;
    };
    let empty: string[] = [];
    await waitUntil(
      'every dashboard query to return series',
      async () => {
        empty = [];
        for (const q of queries) if ((await query(q.expr)).length === 0) empty.push(`${q.panel}: ${q.expr}`);
        return empty.length === 0;
      },
      { timeoutMs: 60_000 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; still empty:\n${empty.join('\n')}`);
    });
    // The worker names its device in /metrics (the engine's probe: "cpu" on this machine).
    await waitUntil('worker_info with the device', async () => (await query('worker_info{device="cpu"}')).length > 0, { timeoutMs: 60_000 });
    const finished = await query('max by (status) (jobs_finished_total)');
    assert.deepEqual(finished.map((r) => [r.metric.status, r.value[1]]), [['succeeded', '1']]);
  });
});
