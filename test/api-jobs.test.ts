// Jobs through HTTP: creation (validation, idempotency, tenant scoping), listing, cancel, report, artifact,
// the SSE stream, and the reconciler — against the real PostgreSQL, Redis and BullMQ.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { buildApp } from '../src/api/app.js';
import { requeueOrphans } from '../src/db/reconcile.js';
import { JobStates } from '../src/jobs/state.js';
import { cancelChannel, createCompressionQueue, type JobProgress } from '../src/queue/index.js';
import { FileStore } from '../src/store/artifacts.js';
import { assertProblem, startTestApp } from './helpers/app.js';
import { startApiSuite, type ApiSuite } from './helpers/api-suite.js';

let t: ApiSuite;
let modelA: string;
let modelB: string;
let datasetA: string;
let mnistDatasetA: string;
let datasetB: string;

before(async () => {
  t = await startApiSuite();
  modelA = await t.upload('models', t.fx.tiny);
  modelB = await t.upload('models', t.fx.tiny2, t.authB);
  datasetA = await t.upload('datasets', t.fx.imagesNpz);
  mnistDatasetA = await t.upload('datasets', t.fx.mnistShapedNpz);
  datasetB = await t.upload('datasets', t.fx.imagesNpz, t.authB);
});
after(() => t?.close());

async function createJob(body: Record<string, unknown>, auth = t.authA): Promise<string> {
  const res = await t.http().post('/v1/jobs').set(auth).send(body);
  assert.equal(res.status, 202, JSON.stringify(res.body));
  return res.body.id as string;
}

describe('POST /v1/jobs', () => {
  test('creates the row, enqueues it under the same id, and answers 202 {id, status}', async () => {
    const res = await t.http().post('/v1/jobs').set(t.authA).send({ modelId: modelA, options: { rule: 'ratio', ratio: 0.5 } });
    assert.equal(res.status, 202);
    assert.deepEqual(Object.keys(res.body).sort(), ['id', 'status']);
    assert.equal(res.body.status, 'queued');
    assert.equal(res.headers.location, `/v1/jobs/${res.body.id}`);
    const row = await t.env.prisma.job.findUniqueOrThrow({ where: { id: res.body.id } });
    assert.deepEqual(row.options, { rule: 'ratio', ratio: 0.5 });
    const queued = await queueJob(res.body.id);
    assert.deepEqual(queued?.data, { jobId: res.body.id, tenantId: row.tenantId });
  });

  test('options default to rule=vbmf; uploaded datasets are accepted; builtin:fashion-mnist must fit the model', async () => {
    const plain = await createJob({ modelId: modelA });
    assert.deepEqual((await t.env.prisma.job.findUniqueOrThrow({ where: { id: plain } })).options, { rule: 'vbmf' });
    // The tiny model takes 3×16×16 images; Fashion-MNIST is 1×28×28: refused at creation, not failed later.
    const misfit = await t.http().post('/v1/jobs').set(t.authA).send({ modelId: modelA, datasetId: 'builtin:fashion-mnist', options: { finetune: { epochs: 1 } } });
    assertProblem(misfit, 422, /C differs \(1 vs 3\)/);
    assert.equal(misfit.body.type, 'https://tuckerize.dev/problems/dataset-shape-mismatch');
    const uploaded = await createJob({
      modelId: modelA,
      datasetId: datasetA,
      options: { rule: 'budget', targetMacs: 0.5, roundTo: 8, inputShape: [1, 3, 16, 16], finetune: { steps: 10, lr: 0.01, distill: true, temperature: 4, alpha: 0.5, batchSize: 4, optimizer: 'adamw' } },
    });
    assert.equal((await t.env.prisma.job.findUniqueOrThrow({ where: { id: uploaded } })).datasetId, datasetA);
  });

  const invalid: Array<[string, unknown, RegExp]> = [
    ['ratio ≤ 0', { modelId: 'M', options: { rule: 'ratio', ratio: 0 } }, /options\/ratio.*> 0/],
    ['ratio > 1', { modelId: 'M', options: { rule: 'ratio', ratio: 1.01 } }, /options\/ratio.*≤ 1/],
    ['rule=ratio without ratio', { modelId: 'M', options: { rule: 'ratio' } }, /rule=ratio needs ratio/],
    ['ratio without rule=ratio', { modelId: 'M', options: { ratio: 0.5 } }, /ratio applies only to rule=ratio/],
    ['targetMacs ≥ 1', { modelId: 'M', options: { rule: 'budget', targetMacs: 1 } }, /targetMacs must be < 1/],
    ['rule=budget without a target', { modelId: 'M', options: { rule: 'budget' } }, /rule=budget needs targetMacs or targetParams/],
    ['rule=latency without targetLatency', { modelId: 'M', options: { rule: 'latency' } }, /targetLatency/],
    ['an unknown rule', { modelId: 'M', options: { rule: 'magic' } }, /options\/rule/],
    ['strength > 1', { modelId: 'M', options: { strength: 2 } }, /strength/],
    ['roundTo 0', { modelId: 'M', options: { roundTo: 0 } }, /options\/roundTo/],
    ['roundTo not an integer', { modelId: 'M', options: { roundTo: 2.5 } }, /options\/roundTo/],
    ['inputShape of 3 numbers', { modelId: 'M', options: { inputShape: [1, 3, 224] } }, /options\/inputShape/],
    ['an unknown option', { modelId: 'M', options: { rank: 4 } }, /Unrecognized key.*rank/],
    ['an unknown top-level field', { modelId: 'M', priority: 1 }, /Unrecognized key.*priority/],
    ['epochs ≤ 0', { modelId: 'M', datasetId: 'builtin:fashion-mnist', options: { finetune: { epochs: 0 } } }, /finetune\.epochs must be > 0/],
    ['lr ≤ 0', { modelId: 'M', datasetId: 'builtin:fashion-mnist', options: { finetune: { lr: -0.1 } } }, /finetune\.lr must be > 0/],
    ['alpha > 1', { modelId: 'M', datasetId: 'builtin:fashion-mnist', options: { finetune: { alpha: 1.5 } } }, /finetune\/alpha/],
    ['an unknown optimizer', { modelId: 'M', datasetId: 'builtin:fashion-mnist', options: { finetune: { optimizer: 'adam' } } }, /optimizer/],
    ['an unknown finetune field', { modelId: 'M', datasetId: 'builtin:fashion-mnist', options: { finetune: { momentum: 0.9 } } }, /momentum/],
    ['finetune without a dataset', { modelId: 'M', options: { finetune: { epochs: 1 } } }, /fine-tuning needs data/],
    ['modelId not a uuid', { modelId: 'abc' }, /modelId must be the id of an uploaded model/],
    ['no modelId', {}, /modelId/],
    ['an unknown builtin dataset', { modelId: 'M', datasetId: 'builtin:imagenet' }, /datasetId must be a dataset id/],
    ['options not an object', { modelId: 'M', options: 'fast' }, /request body at \/options/],
  ];
  // A malformed request is a 400; a well-formed one whose options the engine would refuse is a 422.
  const malformed = new Set(['an unknown top-level field', 'finetune without a dataset', 'modelId not a uuid', 'no modelId',
    'an unknown builtin dataset', 'options not an object']);
  for (const [what, body, detail] of invalid) {
    const status = malformed.has(what) ? 400 : 422;
    test(`${status} for ${what}`, async () => {
      const before = await t.env.prisma.job.count();
      const payload = JSON.parse(JSON.stringify(body).replaceAll('"M"', JSON.stringify(modelA)));
      const res = await t.http().post('/v1/jobs').set(t.authA).send(payload);
      assertProblem(res, status, detail);
      assert.ok(Array.isArray(res.body.errors) && res.body.errors.length > 0, 'errors lists the fields');
      assert.equal(await t.env.prisma.job.count(), before, 'no job row');
    });
  }

  test('malformed JSON is a 400 saying so', async () => {
    const res = await t.http().post('/v1/jobs').set(t.authA).set('content-type', 'application/json').send('{"modelId": ');
    assertProblem(res, 400, /not valid JSON/);
  });

  test('a text/plain body is a 415', async () => {
    const res = await t.http().post('/v1/jobs').set(t.authA).set('content-type', 'text/plain').send('modelId=1');
    assertProblem(res, 415, /application\/json/);
  });

  test("missing or another tenant's model/dataset is a 404, not a 403", async () => {
    assertProblem(await t.http().post('/v1/jobs').set(t.authA).send({ modelId: '00000000-0000-4000-8000-000000000000' }), 404, /model .* does not exist/);
    assertProblem(await t.http().post('/v1/jobs').set(t.authA).send({ modelId: modelB }), 404, /model .* does not exist/);
    assertProblem(await t.http().post('/v1/jobs').set(t.authA).send({ modelId: modelA, datasetId: datasetB }), 404, /dataset .* does not exist/);
  });

  test('a dataset whose samples do not fit the model input is a 422', async () => {
    const res = await t.http().post('/v1/jobs').set(t.authA).send({ modelId: modelA, datasetId: mnistDatasetA, options: { finetune: { epochs: 1 } } });
    assertProblem(res, 422, /\(1, 28, 28\)/);
  });
});

describe('Idempotency-Key', () => {
  test('the same key and body return the same job; a different body is a 409', async () => {
    const body = { modelId: modelA, options: { rule: 'ratio', ratio: 0.25 } };
    const first = await t.http().post('/v1/jobs').set(t.authA).set('idempotency-key', 'k-1').send(body);
    assert.equal(first.status, 202);
    // the same body with keys in another order is the same request
    const again = await t.http().post('/v1/jobs').set(t.authA).set('idempotency-key', 'k-1').send({ options: { ratio: 0.25, rule: 'ratio' }, modelId: modelA });
    assert.equal(again.status, 202);
    assert.equal(again.body.id, first.body.id);
    assert.equal(again.headers['idempotent-replayed'], 'true');
    const conflict = await t.http().post('/v1/jobs').set(t.authA).set('idempotency-key', 'k-1').send({ ...body, options: { rule: 'ratio', ratio: 0.5 } });
    assertProblem(conflict, 409, /different request body/);
    assert.equal(await t.env.prisma.job.count({ where: { idempotencyKey: 'k-1' } }), 1);
  });

  test('concurrent requests with one key create one job', async () => {
    const body = { modelId: modelA, options: { rule: 'vbmf', strength: 0.5 } };
    const results = await Promise.all(
      Array.from({ length: 6 }, () => t.http().post('/v1/jobs').set(t.authA).set('idempotency-key', 'k-concurrent').send(body)),
    );
    for (const r of results) assert.equal(r.status, 202, JSON.stringify(r.body));
    assert.equal(new Set(results.map((r) => r.body.id)).size, 1);
    assert.equal(await t.env.prisma.job.count({ where: { idempotencyKey: 'k-concurrent' } }), 1);
  });

  test('keys are per tenant', async () => {
    const a = await t.http().post('/v1/jobs').set(t.authA).set('idempotency-key', 'shared').send({ modelId: modelA });
    const b = await t.http().post('/v1/jobs').set(t.authB).set('idempotency-key', 'shared').send({ modelId: modelB });
    assert.equal(a.status, 202);
    assert.equal(b.status, 202);
    assert.notEqual(a.body.id, b.body.id);
  });

  test('a key with spaces is a 400', async () => {
    assertProblem(await t.http().post('/v1/jobs').set(t.authA).set('idempotency-key', 'has space').send({ modelId: modelA }), 400, /Idempotency-Key/);
  });
});

describe('GET /v1/jobs and /v1/jobs/:id', () => {
  test('a job shows status, stage, percent, timings, metrics and error', async () => {
    const id = await createJob({ modelId: modelA });
    await t.env.prisma.job.update({
      where: { id },
      data: {
        status: 'failed',
        stage: 'rewrite',
        progress: 0.425,
        errorCategory: 'bad_input',
        errorMessage: 'node conv1: unsupported',
        report: { timings: { analyze: 1.5, plan: 0.25 } },
        metrics: { latencyRatio: 0.5 },
      },
    });
    const res = await t.http().get(`/v1/jobs/${id}`).set(t.authA);
    assert.equal(res.status, 200);
    assert.equal(res.body.status, 'failed');
    assert.equal(res.body.stage, 'rewrite');
    assert.equal(res.body.percent, 42.5);
    assert.deepEqual(res.body.timings, { analyze: 1.5, plan: 0.25 });
    assert.deepEqual(res.body.metrics, { latencyRatio: 0.5 });
    assert.deepEqual(res.body.error, { category: 'bad_input', message: 'node conv1: unsupported' });
    assertProblem(await t.http().get(`/v1/jobs/${id}`).set(t.authB), 404, /does not exist/);
  });

  test('lists newest first with a status filter and cursor paging', async () => {
    const ids = [await createJob({ modelId: modelA }), await createJob({ modelId: modelA }), await createJob({ modelId: modelA })];
    await t.env.prisma.job.update({ where: { id: ids[1] }, data: { status: 'succeeded' } });
    const succeeded = await t.http().get('/v1/jobs?status=succeeded&limit=100').set(t.authA);
    assert.ok(succeeded.body.items.every((j: { status: string }) => j.status === 'succeeded'));
    assert.ok(succeeded.body.items.some((j: { id: string }) => j.id === ids[1]));
    const page1 = await t.http().get('/v1/jobs?limit=2').set(t.authA);
    assert.equal(page1.body.items.length, 2);
    assert.equal(page1.body.items[0].id, ids[2]);
    const page2 = await t.http().get(`/v1/jobs?limit=2&cursor=${page1.body.nextCursor}`).set(t.authA);
    assert.equal(page2.body.items[0].id, ids[0]);
    const theirs = await t.http().get('/v1/jobs?limit=100').set(t.authB);
    assert.equal(theirs.body.items.some((j: { id: string }) => ids.includes(j.id)), false);
    assertProblem(await t.http().get('/v1/jobs?status=done').set(t.authA), 400, /query string at \/status/);
  });
});

describe('POST /v1/jobs/:id/cancel', () => {
  test('a queued job is canceled and removed from the queue; a second cancel answers the canceled job again', async () => {
    const id = await createJob({ modelId: modelA });
    assert.ok(await queueJob(id), 'enqueued');
    const res = await t.http().post(`/v1/jobs/${id}/cancel`).set(t.authA);
    assert.equal(res.status, 200);
    assert.equal(res.body.status, 'canceled');
    assert.deepEqual(res.body.error, { category: 'canceled', message: 'canceled by the client' });
    assert.equal(await queueJob(id), undefined, 'removed from the queue');
    const again = await t.http().post(`/v1/jobs/${id}/cancel`).set(t.authA).set('content-type', 'application/json');
    assert.equal(again.status, 200, 'idempotent, and an empty JSON body is no body');
    assert.equal(again.body.status, 'canceled');
    assert.equal(again.body.finishedAt, res.body.finishedAt, 'the same cancellation');
  });

  test('a running job is marked canceled in the DB and its id is published for the workers', async () => {
    const id = await createJob({ modelId: modelA });
    await t.env.prisma.job.update({ where: { id }, data: { status: 'running', stage: 'plan' } });
    const subscriber = new Redis(t.env.config.redisUrl);
    try {
      await subscriber.subscribe(cancelChannel(t.env.config.queuePrefix));
      const published = new Promise<string>((resolve) => subscriber.on('message', (_channel, message: string) => resolve(message)));
      const res = await t.http().post(`/v1/jobs/${id}/cancel`).set(t.authA);
      assert.equal(res.status, 200);
      assert.equal(await published, id);
      const row = await t.env.prisma.job.findUniqueOrThrow({ where: { id } });
      assert.equal(row.status, 'canceled');
      assert.ok(row.finishedAt);
    } finally {
      subscriber.disconnect();
    }
  });

  test("finished jobs cannot be canceled; another tenant's job is a 404", async () => {
    const id = await createJob({ modelId: modelA });
    await t.env.prisma.job.update({ where: { id }, data: { status: 'succeeded' } });
    assertProblem(await t.http().post(`/v1/jobs/${id}/cancel`).set(t.authA), 409, /already succeeded/);
    const other = await createJob({ modelId: modelA });
    assertProblem(await t.http().post(`/v1/jobs/${other}/cancel`).set(t.authB), 404, /does not exist/);
    assert.equal((await t.env.prisma.job.findUniqueOrThrow({ where: { id: other } })).status, 'queued');
  });
});

describe('report and artifact', () => {
  test('409 before the job has them; afterwards the report as JSON and the artifact streamed with its sha256', async () => {
    const id = await createJob({ modelId: modelA });
    assertProblem(await t.http().get(`/v1/jobs/${id}/report`).set(t.authA), 409, /no report yet/);
    assertProblem(await t.http().get(`/v1/jobs/${id}/artifact`).set(t.authA), 409, /is queued/);

    // What the worker does on success: store the compressed model, record it, attach the report.
    const store = new FileStore(t.env.config.storageDir);
    const object = await store.ingestFile(t.fx.tiny2);
    const report = { layers: [], totals: { params: { before: 314, after: 200, ratio: 0.64 }, macs: { before: 9000, after: 5000, ratio: 0.56 } }, timings: { analyze: 0.1 } };
    await t.env.prisma.artifact.create({ data: { jobId: id, kind: 'model', sha256: object.sha256, bytes: BigInt(object.bytes), storageKey: object.key } });
    await t.env.prisma.job.update({ where: { id }, data: { status: 'succeeded', progress: 1, report } });

    const reportRes = await t.http().get(`/v1/jobs/${id}/report`).set(t.authA);
    assert.equal(reportRes.status, 200);
    assert.deepEqual(reportRes.body, report);

    const res = await t.http().get(`/v1/jobs/${id}/artifact`).set(t.authA).buffer(true).parse(binary);
    assert.equal(res.status, 200);
    const expected = await readFile(t.fx.tiny2);
    assert.ok((res.body as Buffer).equals(expected), 'the streamed bytes are the artifact');
    const sha = createHash('sha256').update(expected).digest('hex');
    assert.equal(res.headers['x-content-sha256'], sha);
    assert.equal(res.headers.etag, `"${sha}"`);
    assert.equal(res.headers.digest, `sha-256=${createHash('sha256').update(expected).digest('base64')}`);
    assert.equal(res.headers['content-length'], String(expected.length));
    assert.equal(res.headers['content-type'], 'application/octet-stream');
    assert.match(res.headers['content-disposition'] ?? '', /attachment; filename="tiny\.compressed\.onnx"/);

    const cached = await t.http().get(`/v1/jobs/${id}/artifact`).set(t.authA).set('if-none-match', `"${sha}"`);
    assert.equal(cached.status, 304);
    assertProblem(await t.http().get(`/v1/jobs/${id}/artifact`).set(t.authB), 404, /does not exist/);
    assertProblem(await t.http().get(`/v1/jobs/${id}/report`).set(t.authB), 404, /does not exist/);
  });
});

describe('GET /v1/jobs/:id/events (SSE)', () => {
  test('streams the state, live progress from the job-events channel, and ends with the terminal status', async () => {
    const id = await createJob({ modelId: modelA });
    const address = await t.app.listen({ port: 0, host: '127.0.0.1' });
    const response = await fetch(`${address}/v1/jobs/${id}/events`, { headers: t.authA });
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
    const events = readEvents(response);

    const first = await events.next();
    assert.equal(first.value?.event, 'status');
    assert.equal((first.value?.data as { status: string }).status, 'queued');

    // A stand-in for the worker: the state machine's transitions, which publish on the job-events channel.
    const publisher = new Redis(t.env.config.redisUrl);
    const states = new JobStates({ prisma: t.env.prisma, publisher, prefix: t.env.config.queuePrefix });
    try {
      assert.ok(await states.claim(id, { workerId: 'test', attempt: 1 }));
      const progress: JobProgress = { stage: 'plan', done: 1, total: 2, percent: 30 };
      assert.ok(await states.progress(id, progress));
      await states.succeed(id, { report: {}, metrics: {}, event: {} });
      const received: Array<{ event: string; data: unknown }> = [];
      for await (const e of { [Symbol.asyncIterator]: () => events }) received.push(e);
      assert.deepEqual(
        received.map((e) => [e.event, (e.data as { status?: string }).status]),
        [['status', 'running'], ['progress', undefined], ['status', 'succeeded']],
      );
      assert.deepEqual(received[1]?.data, { ...progress, rate: null, etaSeconds: null }, 'one update of a stage has no rate yet');
    } finally {
      publisher.disconnect();
    }
  });

  test('a finished job gets one status event and the stream ends; unknown job 404', async () => {
    const id = await createJob({ modelId: modelA });
    await t.env.prisma.job.update({ where: { id }, data: { status: 'failed', errorCategory: 'engine_crash', errorMessage: 'boom' } });
    const res = await t.http().get(`/v1/jobs/${id}/events`).set(t.authA);
    assert.equal(res.status, 200);
    const blocks = res.text.trim().split('\n\n');
    assert.equal(blocks.length, 1);
    assert.match(blocks[0] ?? '', /^id: 1\nevent: status\ndata: .*"status":"failed"/);
    assertProblem(await t.http().get(`/v1/jobs/${id}/events`).set(t.authB), 404, /does not exist/);
  });
});

describe('shutdown', () => {
  test('close() ends open event streams instead of waiting for their jobs', { timeout: 30_000 }, async () => {
    const id = await createJob({ modelId: modelA });
    const app = await buildApp(t.env.config, { prisma: t.env.prisma, analyzeModels: false });
    const address = await app.listen({ port: 0, host: '127.0.0.1' });
    const response = await fetch(`${address}/v1/jobs/${id}/events`, { headers: t.authA });
    const events = readEvents(response);
    assert.equal((await events.next()).value?.event, 'status');
    await app.close();
    assert.equal((await events.next()).done, true, 'the stream ended');
  });
});

describe('enqueue failure and requeueOrphans', () => {
  test('a job whose enqueue fails stays queued in the DB and the reconciler enqueues it once', async () => {
    const deadQueue = createCompressionQueue({ host: '127.0.0.1', port: 1, maxRetriesPerRequest: 1, retryStrategy: () => null, connectTimeout: 300 }, t.env.config.queuePrefix);
    deadQueue.on('error', () => undefined);
    const broken = await startTestApp({}, { queue: deadQueue });
    try {
      const model = await broken.http().post('/v1/models').set(broken.authA).attach('file', t.fx.tiny);
      const res = await broken.http().post('/v1/jobs').set(broken.authA).send({ modelId: model.body.id });
      assert.equal(res.status, 202, JSON.stringify(res.body));
      assert.equal((await broken.env.prisma.job.findUniqueOrThrow({ where: { id: res.body.id } })).status, 'queued');

      const queue = createCompressionQueue({ url: broken.env.config.redisUrl }, broken.env.config.queuePrefix);
      try {
        assert.equal(await queue.getJob(res.body.id), undefined, 'not in Redis');
        const first = await requeueOrphans(broken.env.prisma, queue);
        assert.deepEqual(first.requeued, [res.body.id]);
        assert.deepEqual((await queue.getJob(res.body.id))?.data, { jobId: res.body.id, tenantId: (await broken.env.prisma.job.findUniqueOrThrow({ where: { id: res.body.id } })).tenantId });
        const second = await requeueOrphans(broken.env.prisma, queue);
        assert.deepEqual(second, { requeued: [], present: 1 });
      } finally {
        await queue.close();
      }
    } finally {
      await broken.close();
      await deadQueue.close().catch(() => undefined);
    }
  });
});

async function queueJob(id: string) {
  const queue = createCompressionQueue({ url: t.env.config.redisUrl }, t.env.config.queuePrefix);
  try {
    return await queue.getJob(id);
  } finally {
    await queue.close();
  }
}

function binary(res: unknown, callback: (err: Error | null, body: Buffer) => void): void {
  const stream = res as NodeJS.ReadableStream;
  const chunks: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  stream.on('end', () => callback(null, Buffer.concat(chunks)));
}

/** Parses an SSE body into {event, data} records as they arrive. */
function readEvents(response: Response): AsyncIterator<{ event: string; data: unknown }> {
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  return {
    async next() {
      for (;;) {
        const end = buffer.indexOf('\n\n');
        if (end >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (block.startsWith(':')) continue; // keep-alive comment
          const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message';
          const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? 'null') as unknown;
          return { value: { event, data }, done: false };
        }
        const chunk = await reader.read();
        if (chunk.done) return { value: undefined, done: true };
        buffer += decoder.decode(chunk.value, { stream: true });
      }
    },
  };
}
