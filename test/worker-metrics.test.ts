// The worker's own /metrics: slots, busy slots, busy slot-seconds and processed jobs, observed on a real
// BullMQ worker (real Redis), served over HTTP.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';
import { Queue, QueueEvents, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { createWorkerMetrics, serveMetrics } from '../src/ops/worker-metrics.js';
import { deleteRedisPrefix } from '../src/queue/redis-keys.js';

const REDIS_URL = 'redis://127.0.0.1:6379';
const prefix = `tkt-wm-${randomBytes(4).toString('hex')}`;
const connection = new Redis(REDIS_URL, { maxRetriesPerRequest: null });

after(async () => {
  connection.disconnect();
  await deleteRedisPrefix(REDIS_URL, prefix);
});

function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.split(' ').pop());
  }
  return undefined;
}

test('busy slot-seconds, processed jobs by outcome and the device, served on /metrics', async () => {
  let release!: () => void;
  const running = new Promise<void>((resolve) => {
    release = resolve;
  });
  const queue = new Queue('wm', { connection, prefix });
  const eventsConnection = connection.duplicate();
  const events = new QueueEvents('wm', { connection: eventsConnection, prefix });
  const worker = new Worker(
    'wm',
    async (job) => {
      if (job.name === 'fail') throw new Error('refused');
      await new Promise((r) => setTimeout(r, 300));
      await running;
    },
    { connection, prefix, concurrency: 2 },
  );
  const metrics = createWorkerMetrics(worker, { workerId: 'w1', slots: 2, device: 'unknown' });
  const server = await serveMetrics(metrics.registry, '127.0.0.1', 0);
  try {
    await events.waitUntilReady();
    const ok = await queue.add('ok', {});
    await new Promise((r) => setTimeout(r, 100));
    const scrape = async () => (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
    let text = await scrape();
    assert.equal(sample(text, 'worker_slots', { worker: 'w1' }), 2);
    assert.equal(sample(text, 'worker_busy_slots', { worker: 'w1' }), 1, 'one job running');
    release();
    await ok.waitUntilFinished(events);
    const failed = await queue.add('fail', {});
    await assert.rejects(failed.waitUntilFinished(events), /refused/);
    metrics.setDevice('NVIDIA H200');
    text = await scrape();
    assert.equal(sample(text, 'worker_busy_slots'), 0);
    assert.ok(sample(text, 'worker_busy_seconds_total', { worker: 'w1' })! >= 0.3, 'the 300 ms job counted as busy');
    assert.equal(sample(text, 'worker_jobs_processed_total', { outcome: 'completed' }), 1);
    assert.equal(sample(text, 'worker_jobs_processed_total', { outcome: 'failed' }), 1);
    assert.equal(sample(text, 'worker_info', { worker: 'w1', device: 'NVIDIA H200' }), 1);
    assert.equal((await fetch(`http://127.0.0.1:${server.port}/other`)).status, 404);
  } finally {
    await server.close();
    await worker.close();
    await events.close();
    await queue.close();
    eventsConnection.disconnect();
  }
});
