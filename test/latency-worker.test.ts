// A rule=latency job through the real worker, Postgres, Redis, engine and onnxruntime-node: the worker times
// the engine's candidate layers before it spawns `run`, and the stored report carries both the measured
// table's prediction and the rounds. Needs the jobs.ts wiring of src/worker/latency.ts.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { COMPRESSION_QUEUE, createCompressionQueue, enqueueCompressionJob } from '../src/queue/index.js';
import { FileStore } from '../src/store/artifacts.js';
import { startWorker } from '../src/worker/runner.js';
import { createTestEnv } from './helpers/env.js';
import { ENGINE_DIR, insertJob, insertModel } from './worker-fixtures.js';

// One 3×3 conv 64→64 on a 32×32 map with multilinear rank 8: Tucker-2 removes ~95 % of its MACs, far
// more than any per-node overhead, so whatever this machine measures, a rewrite is left to carry the target.
const BUILD = `
import sys, numpy as np, onnx
from onnx import helper, numpy_helper
from onnx_builders import low_rank_kernel, make_model, value
rng = np.random.default_rng(3)
w = ((low_rank_kernel(rng, 64, 64, 3, 3, 8, 8) + 0.01 * rng.standard_normal((64, 64, 3, 3))) / 24).astype(np.float32)
node = helper.make_node("Conv", ["input", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
m = make_model([node], [value("input", [1, 64, 32, 32], np.float32)], [value("y", [1, 64, 32, 32], np.float32)],
               [numpy_helper.from_array(w, "w")])
onnx.save(m, sys.argv[1])
`;

let dir = '';
let model = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'latency-worker-'));
  model = join(dir, 'conv.onnx');
  execFileSync('/usr/bin/python3', ['-c', BUILD, model], { env: { ...process.env, PYTHONPATH: `${ENGINE_DIR}:${join(ENGINE_DIR, 'tests')}` } });
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('a rule=latency job: candidates timed by the worker, table handed to the engine, prediction stored', async () => {
  const env = await createTestEnv();
  const worker = await startWorker(env.config, { logger: pino({ level: 'silent' }) });
  const connection = new Redis(env.config.redisUrl, { maxRetriesPerRequest: null });
  const queue = createCompressionQueue(connection, env.config.queuePrefix);
  const events = new QueueEvents(COMPRESSION_QUEUE, {
    connection: { url: env.config.redisUrl, maxRetriesPerRequest: null }, prefix: env.config.queuePrefix,
  });
  try {
    await events.waitUntilReady();
    const store = new FileStore(env.config.storageDir);
    const tenant = await env.prisma.tenant.create({ data: { name: `latency-${randomBytes(3).toString('hex')}` } });
    const modelId = await insertModel(env.prisma, store, tenant.id, model, [{ name: 'input', type: 'float32', dims: [1, 64, 32, 32] }]);
    const jobId = await insertJob(env.prisma, tenant.id, modelId, { rule: 'latency', targetLatency: 0.25 });
    await enqueueCompressionJob(queue, { jobId, tenantId: tenant.id });
    const job = await queue.getJob(jobId);
    assert.ok(job);
    const outcome = await job.waitUntilFinished(events) as { status: string };
    assert.equal(outcome.status, 'succeeded');

    const row = await env.prisma.job.findUniqueOrThrow({ where: { id: jobId }, include: { events: true } });
    const report = row.report as {
      rule: string;
      totals: { latency: { predictedRatio: number; targetRatio: number; basis: string } };
      latencyPlan: { rounds: Array<{ timedLayers: number }>; targetMacs: number; predictedRatio: number };
    };
    assert.equal(report.rule, 'latency');
    assert.ok(report.latencyPlan.rounds.length >= 1 && report.latencyPlan.rounds.length <= 3);
    assert.ok(report.latencyPlan.rounds.every((r) => r.timedLayers === 1));
    assert.equal(report.totals.latency.targetRatio, 0.25);
    assert.equal(report.totals.latency.basis, 'model');
    assert.ok(Math.abs(report.totals.latency.predictedRatio - report.latencyPlan.predictedRatio) < 1e-9);
    assert.ok(row.events.some((e) => e.type === 'latency'), 'the rounds are in the job events');
  } finally {
    await worker.close();
    await events.close();
    await queue.close();
    await connection.quit();
    await env.cleanup();
  }
});
