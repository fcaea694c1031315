// Operator metrics and dashboard stats against the machine's real PostgreSQL and Redis: the numbers in
// /metrics and computeStats must be exactly what the job rows and the queue hold.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { Queue, Worker, type ConnectionOptions } from 'bullmq';
import Fastify from 'fastify';
import { createServiceMetrics, instrumentHttp } from '../src/ops/metrics.js';
import { computeStats } from '../src/ops/stats.js';
import { createTestEnv, type TestEnv } from './helpers/env.js';

let env: TestEnv;
const HOUR = 3600 * 1000;
// A fixed "now" in the middle of an hour, so hour buckets in the assertions are unambiguous.
const NOW = new Date(Date.UTC(2026, 10, 27, 12, 30, 0));

interface JobSpec {
  tenant: 'a' | 'b';
  status: 'queued' | 'running' | 'succeeded' | 'failed' | 'canceled';
  seconds?: number;
  finishedHoursAgo?: number;
  errorCategory?: string;
  metrics?: Record<string, number>;
  stages?: Record<string, number>;
}

const JOBS: JobSpec[] = [
  { tenant: 'a', status: 'succeeded', seconds: 10, finishedHoursAgo: 0, metrics: { macs_reduction: 4, params_reduction: 2 }, stages: { analyze: 0.3, rewrite: 2 } },
  { tenant: 'a', status: 'succeeded', seconds: 100, finishedHoursAgo: 2, metrics: { macs_reduction: 2, params_reduction: 6 }, stages: { analyze: 0.7 } },
  { tenant: 'a', status: 'succeeded', seconds: 40, finishedHoursAgo: 2, metrics: { macs_reduction: 3 } },
  { tenant: 'a', status: 'failed', seconds: 3, finishedHoursAgo: 2, errorCategory: 'bad_input' },
  { tenant: 'a', status: 'failed', seconds: 7200, finishedHoursAgo: 30, errorCategory: 'timeout' },
  { tenant: 'a', status: 'canceled', seconds: 1, finishedHoursAgo: 5, errorCategory: 'canceled' },
  { tenant: 'a', status: 'running' },
  { tenant: 'a', status: 'queued' },
  { tenant: 'b', status: 'succeeded', seconds: 2000, finishedHoursAgo: 1, metrics: { macs_reduction: 10, params_reduction: 10 } },
];

before(async () => {
  env = await createTestEnv();
  const { prisma } = env;
  const tenants = {
    a: await prisma.tenant.create({ data: { name: 'metrics-a' } }),
    b: await prisma.tenant.create({ data: { name: 'metrics-b' } }),
  };
  const models = {
    a: await prisma.onnxModel.create({ data: { tenantId: tenants.a.id, name: 'm', sha256: 'a'.repeat(64), bytes: 10n, storageKey: 'k', opset: 13, inputs: [], outputs: [] } }),
    b: await prisma.onnxModel.create({ data: { tenantId: tenants.b.id, name: 'm', sha256: 'b'.repeat(64), bytes: 10n, storageKey: 'k', opset: 13, inputs: [], outputs: [] } }),
  };
  for (const spec of JOBS) {
    const finishedAt = spec.finishedHoursAgo === undefined ? null : new Date(NOW.getTime() - spec.finishedHoursAgo * HOUR);
    const startedAt = finishedAt && spec.seconds !== undefined ? new Date(finishedAt.getTime() - spec.seconds * 1000) : spec.status === 'running' ? NOW : null;
    const job = await prisma.job.create({
      data: {
        tenantId: tenants[spec.tenant].id,
        modelId: models[spec.tenant].id,
        options: {},
        status: spec.status,
        startedAt,
        finishedAt,
        errorCategory: spec.errorCategory ?? null,
        ...(spec.metrics ? { metrics: spec.metrics } : {}),
      },
    });
    for (const [stage, value] of Object.entries(spec.stages ?? {})) {
      await prisma.metric.create({ data: { jobId: job.id, name: `stage_seconds_${stage}`, value, unit: 's' } });
    }
  }
});

after(async () => {
  await env.cleanup();
});

/** The value of one exposition line, found by its exact name and label set. */
function sample(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  assert.ok(line, `series ${series} missing from:\n${text}`);
  return Number(line.slice(series.length + 1));
}

describe('metrics', () => {
  test('job series come from the database, HTTP series from observations', async () => {
    const metrics = createServiceMetrics({ prisma: env.prisma });
    metrics.observeHttp('GET', '/v1/jobs/:id', 200, 0.02);
    metrics.observeHttp('GET', '/v1/jobs/:id', 200, 0.2);
    metrics.observeHttp('POST', '/v1/jobs', 422, 0.004);
    const text = await metrics.registry.metrics();

    assert.equal(sample(text, 'jobs_created_total'), JOBS.length);
    assert.equal(sample(text, 'jobs_finished_total{status="succeeded",reason="none"}'), 4);
    assert.equal(sample(text, 'jobs_finished_total{status="failed",reason="bad_input"}'), 1);
    assert.equal(sample(text, 'jobs_finished_total{status="failed",reason="timeout"}'), 1);
    assert.equal(sample(text, 'jobs_finished_total{status="canceled",reason="canceled"}'), 1);

    // succeeded durations: 10, 40, 100, 2000 s
    assert.equal(sample(text, 'job_duration_seconds_bucket{le="5",status="succeeded"}'), 0);
    assert.equal(sample(text, 'job_duration_seconds_bucket{le="15",status="succeeded"}'), 1);
    assert.equal(sample(text, 'job_duration_seconds_bucket{le="60",status="succeeded"}'), 2);
    assert.equal(sample(text, 'job_duration_seconds_bucket{le="120",status="succeeded"}'), 3);
    assert.equal(sample(text, 'job_duration_seconds_bucket{le="3600",status="succeeded"}'), 4);
    assert.equal(sample(text, 'job_duration_seconds_bucket{le="+Inf",status="succeeded"}'), 4);
    assert.equal(sample(text, 'job_duration_seconds_sum{status="succeeded"}'), 2150);
    assert.equal(sample(text, 'job_duration_seconds_count{status="succeeded"}'), 4);
    assert.equal(sample(text, 'job_duration_seconds_bucket{le="5",status="failed"}'), 1);
    assert.equal(sample(text, 'job_duration_seconds_count{status="failed"}'), 2);

    assert.equal(sample(text, 'job_stage_duration_seconds_bucket{le="0.5",stage="analyze"}'), 1);
    assert.equal(sample(text, 'job_stage_duration_seconds_bucket{le="1",stage="analyze"}'), 2);
    assert.equal(sample(text, 'job_stage_duration_seconds_sum{stage="analyze"}'), 1);
    assert.equal(sample(text, 'job_stage_duration_seconds_count{stage="rewrite"}'), 1);

    assert.equal(sample(text, 'http_request_duration_seconds_count{method="GET",route="/v1/jobs/:id",status_code="200"}'), 2);
    assert.equal(sample(text, 'http_request_duration_seconds_bucket{le="0.025",method="GET",route="/v1/jobs/:id",status_code="200"}'), 1);
    assert.equal(sample(text, 'http_request_duration_seconds_count{method="POST",route="/v1/jobs",status_code="422"}'), 1);
    assert.equal(sample(text, 'metrics_source_up{source="postgres"}'), 1);
    assert.match(text, /# TYPE job_duration_seconds histogram/);
    assert.match(text, /# TYPE jobs_finished_total counter/);
  });

  test('instrumentHttp labels requests by route pattern, and unmatched URLs as one label', async () => {
    const metrics = createServiceMetrics({ prisma: env.prisma });
    const app = Fastify();
    instrumentHttp(app, metrics);
    app.get('/v1/jobs/:id', async (request) => ({ id: (request.params as { id: string }).id }));
    await app.ready();
    for (const id of ['a', 'b', 'c']) assert.equal((await app.inject({ method: 'GET', url: `/v1/jobs/${id}` })).statusCode, 200);
    for (const probe of ['/wp-admin', '/.env']) assert.equal((await app.inject({ method: 'GET', url: probe })).statusCode, 404);
    await app.close();
    const text = await metrics.registry.metrics();
    assert.equal(sample(text, 'http_request_duration_seconds_count{method="GET",route="/v1/jobs/:id",status_code="200"}'), 3);
    assert.equal(sample(text, 'http_request_duration_seconds_count{method="GET",route="(unmatched)",status_code="404"}'), 2);
    assert.doesNotMatch(text, /wp-admin|\.env/);
  });

  test('queue gauges read BullMQ: depth by state, oldest waiting age, busy workers', async () => {
    const connection: ConnectionOptions = { url: env.config.redisUrl, maxRetriesPerRequest: null };
    const queueName = `metrics-${randomUUID()}`;
    const queue = new Queue(queueName, { connection, prefix: env.config.queuePrefix });
    const nowMs = Date.now();
    await queue.add('compress', { n: 1 }, { timestamp: nowMs - 90_000 });
    await queue.add('compress', { n: 2 }, { timestamp: nowMs - 60_000 });
    await queue.add('compress', { n: 3 }, { timestamp: nowMs - 10_000 });
    const metrics = createServiceMetrics({ prisma: env.prisma, queue, now: () => nowMs });

    let text = await metrics.registry.metrics();
    assert.equal(sample(text, 'queue_depth{state="waiting"}'), 3);
    assert.equal(sample(text, 'queue_depth{state="active"}'), 0);
    assert.equal(sample(text, 'queue_oldest_waiting_age_seconds'), 90);
    assert.equal(sample(text, 'workers_busy'), 0);

    // One worker takes the oldest job and holds it until released.
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const worker = new Worker(queueName, () => held, { connection, prefix: env.config.queuePrefix, concurrency: 1 });
    await new Promise<void>((resolve) => worker.once('active', () => resolve()));
    text = await metrics.registry.metrics();
    assert.equal(sample(text, 'workers_busy'), 1);
    assert.equal(sample(text, 'queue_depth{state="waiting"}'), 2);
    assert.equal(sample(text, 'queue_oldest_waiting_age_seconds'), 60);
    assert.equal(sample(text, 'metrics_source_up{source="redis"}'), 1);

    release();
    await worker.close();
    await queue.obliterate({ force: true });
    await queue.close();
  });

  test('an unreachable Redis marks the source down instead of failing or hanging the scrape', async () => {
    const queue = new Queue('unreachable', { connection: { host: '127.0.0.1', port: 1, maxRetriesPerRequest: null, retryStrategy: () => null }, prefix: 'x' });
    queue.on('error', () => {}); // the refused connection is the point of this test
    const errors: string[] = [];
    const metrics = createServiceMetrics({ prisma: env.prisma, queue, collectTimeoutMs: 500, onCollectError: (source) => errors.push(source) });
    const text = await metrics.registry.metrics();
    assert.equal(sample(text, 'metrics_source_up{source="redis"}'), 0);
    assert.doesNotMatch(text, /^queue_depth\{/m);
    assert.ok(errors.includes('redis'));
    assert.equal(sample(text, 'jobs_created_total'), JOBS.length);
    await queue.close();
  });
});

describe('stats', () => {
  test('all tenants: hourly throughput, success rate and median compression over the last 24 h', async () => {
    const stats = await computeStats(env.prisma, null, NOW);
    assert.equal(stats.throughputPerHour.length, 24);
    assert.equal(stats.to, '2026-11-27T13:00:00.000Z');
    assert.equal(stats.from, '2026-11-26T13:00:00.000Z');
    const byHour = Object.fromEntries(stats.throughputPerHour.map((h) => [h.hour.slice(11, 13), h]));
    assert.deepEqual(byHour['12'], { hour: '2026-11-27T12:00:00.000Z', succeeded: 1, failed: 0, canceled: 0 });
    assert.deepEqual(byHour['11'], { hour: '2026-11-27T11:00:00.000Z', succeeded: 1, failed: 0, canceled: 0 });
    assert.deepEqual(byHour['10'], { hour: '2026-11-27T10:00:00.000Z', succeeded: 2, failed: 1, canceled: 0 });
    assert.deepEqual(byHour['07'], { hour: '2026-11-27T07:00:00.000Z', succeeded: 0, failed: 0, canceled: 1 });
    // the timeout 30 h ago is outside the window
    assert.deepEqual(stats.finished, { succeeded: 4, failed: 1, canceled: 1 });
    assert.deepEqual(stats.pending, { queued: 1, running: 1 });
    assert.equal(stats.successRate, 4 / 5);
    // MACs ratios 4, 2, 3, 10 → median 3.5; params ratios 2, 6, 10 → 6
    assert.deepEqual(stats.medianCompression, { macs: 3.5, params: 6, jobs: 4 });
  });

  test('one tenant sees only its own jobs', async () => {
    const tenant = await env.prisma.tenant.findUniqueOrThrow({ where: { name: 'metrics-b' } });
    const stats = await computeStats(env.prisma, tenant.id, NOW);
    assert.deepEqual(stats.finished, { succeeded: 1, failed: 0, canceled: 0 });
    assert.deepEqual(stats.pending, { queued: 0, running: 0 });
    assert.equal(stats.successRate, 1);
    assert.deepEqual(stats.medianCompression, { macs: 10, params: 10, jobs: 1 });
  });

  test('a tenant without jobs gets zeros and nulls, not NaN', async () => {
    const empty = await env.prisma.tenant.create({ data: { name: 'metrics-empty' } });
    const stats = await computeStats(env.prisma, empty.id, NOW);
    assert.equal(stats.successRate, null);
    assert.deepEqual(stats.medianCompression, { macs: null, params: null, jobs: 0 });
    assert.ok(stats.throughputPerHour.every((h) => h.succeeded + h.failed + h.canceled === 0));
  });
});
