// End to end: the real API (buildApp on an ephemeral port), a real worker and the real engine.
// A torchvision ResNet-18 (random weights, 1×3×64×64) is uploaded, compressed with rule=ratio, followed over
// SSE to `succeeded`, downloaded (sha256 checked) and run with onnxruntime-node; a second job is canceled
// while the engine is rewriting, and its whole process group must be gone.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import * as ort from 'onnxruntime-node';
import { pino } from 'pino';
import { buildApp } from '../src/api/app.js';
import { ApiClient, readSse, type SseMessage } from '../src/demo/client.js';
import { processGroupAlive } from '../src/worker/engine.js';
import { startWorker, type RunningWorker } from '../src/worker/runner.js';
import { createTestEnv, createTestKey, type TestEnv } from './helpers/env.js';
import { zooModel } from './worker-fixtures.js';

describe('end to end: API + worker + engine', () => {
  let env: TestEnv;
  let app: FastifyInstance;
  let worker: RunningWorker;
  let client: ApiClient;
  let baseUrl: string;
  let key: string;
  let modelId: string;
  const engines = new Map<string, number>();

  before(async () => {
    const resnet = await zooModel('resnet18', 64);
    env = await createTestEnv();
    app = await buildApp(env.config, { prisma: env.prisma, analyzeModels: false });
    await app.listen({ port: 0, host: '127.0.0.1' });
    baseUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    worker = await startWorker(env.config, {
      logger: pino({ level: 'silent' }),
      onEngineStarted: ({ jobId, pgid }) => engines.set(jobId, pgid),
    });
    key = await createTestKey(env.prisma, 'e2e');
    client = new ApiClient(baseUrl, key);
    const model = await client.uploadModel(resnet);
    modelId = model.id;
  });

  after(async () => {
    await worker?.close();
    await app?.close();
    await env?.cleanup();
  });

  it('compresses with rule=ratio, streams progress to succeeded, and serves a runnable artifact', async () => {
    const job = await client.request<{ id: string; status: string }>('POST', '/v1/jobs', {
      modelId,
      options: { rule: 'ratio', ratio: 0.5 },
    });
    assert.equal(job.status, 'queued');

    const messages: SseMessage[] = [];
    const final = await client.followJob(job.id, (m) => messages.push(m));
    assert.equal(final.status, 'succeeded', JSON.stringify(final.error));
    const progress = messages.filter((m) => m.event === 'progress').map((m) => m.data as { stage: string; percent: number });
    assert.ok(progress.length > 0, 'progress events streamed while the job ran');
    const stages = new Set(progress.map((p) => p.stage));
    for (const stage of ['analyze', 'rewrite']) assert.ok(stages.has(stage), `saw ${stage} (got ${[...stages].join(', ')})`);
    for (const p of progress) assert.ok(p.percent >= 0 && p.percent <= 100, `percent ${p.percent}`);

    const res = await fetch(`${baseUrl}/v1/jobs/${job.id}/artifact`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(res.status, 200);
    const bytes = Buffer.from(await res.arrayBuffer());
    assert.equal(res.headers.get('x-content-sha256'), createHash('sha256').update(bytes).digest('hex'));
    assert.equal(Number(res.headers.get('content-length')), bytes.length);
    const original = await readFile(await zooModel('resnet18', 64));
    assert.ok(bytes.length < original.length, `artifact ${bytes.length} B is smaller than the original ${original.length} B`);

    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1, interOpNumThreads: 1 });
    try {
      const input = new ort.Tensor('float32', Float32Array.from({ length: 3 * 64 * 64 }, (_, i) => Math.sin(i)), [1, 3, 64, 64]);
      const outputs = await session.run({ [session.inputNames[0]!]: input });
      const logits = outputs[session.outputNames[0]!]!;
      assert.deepEqual(logits.dims, [1, 1000]);
      assert.ok((logits.data as Float32Array).every(Number.isFinite), 'finite outputs');
    } finally {
      await session.release();
    }

    const view = await client.request<{ status: string; progress: number; metrics: Record<string, number> }>('GET', `/v1/jobs/${job.id}`);
    assert.equal(view.status, 'succeeded');
    assert.equal(view.progress, 1);
    assert.ok(view.metrics.macsAfter! < view.metrics.macsBefore!);
    const report = await client.request<{ layers: unknown[]; measurement: { table1: unknown } }>('GET', `/v1/jobs/${job.id}/report`);
    assert.equal(report.layers.length, 21, 'ResNet-18: 20 convs + the FC layer planned');
    assert.ok(report.measurement.table1, 'measured with onnxruntime-node');
  });

  it('cancels a running job: the engine process group is gone and the job is canceled', async () => {
    const job = await client.request<{ id: string }>('POST', '/v1/jobs', { modelId, options: { rule: 'ratio', ratio: 0.25 } });
    const res = await fetch(`${baseUrl}/v1/jobs/${job.id}/events`, { headers: { authorization: `Bearer ${key}` } });
    assert.ok(res.ok && res.body);
    const stream = readSse(res.body);
    // Mid-run: the engine is rewriting layers (ResNet-18's Tucker decompositions take seconds).
    for (;;) {
      const next = await stream.next();
      assert.ok(!next.done, 'stream ended before the rewrite began');
      const data = next.value.data as { stage?: string; status?: string };
      if (next.value.event === 'progress' && data.stage === 'rewrite') break;
      assert.ok(!(next.value.event === 'status' && data.status === 'succeeded'), 'job finished before it could be canceled');
    }
    const pgid = engines.get(job.id);
    assert.ok(pgid !== undefined && processGroupAlive(pgid), 'engine is running');

    const workerDone = new Promise<void>((resolve) => {
      worker.worker.on('failed', (j) => {
        if (j?.data.jobId === job.id) resolve();
      });
    });
    const canceled = await client.request<{ status: string }>('POST', `/v1/jobs/${job.id}/cancel`);
    assert.equal(canceled.status, 'canceled');

    let terminal: string | undefined;
    for await (const message of stream) {
      const data = message.data as { status?: string };
      if (message.event === 'status') terminal = data.status;
    }
    assert.equal(terminal, 'canceled', 'the SSE stream ends with the canceled status');

    await workerDone;
    assert.throws(() => process.kill(-pgid, 0), { code: 'ESRCH' }, 'no process of the engine group is left');
    const view = await client.request<{ status: string; error: { category: string } | null; attempts: number }>('GET', `/v1/jobs/${job.id}`);
    assert.equal(view.status, 'canceled');
    assert.equal(view.error?.category, 'canceled');
    assert.equal(view.attempts, 1, 'not retried');
    const artifact = await fetch(`${baseUrl}/v1/jobs/${job.id}/artifact`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(artifact.status, 409);
  });
});
