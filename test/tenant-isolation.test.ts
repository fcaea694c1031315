// Issue 12: what one tenant shares with the others (the API process, its database connection, the queue)
// cannot be exhausted by it. Each test reproduces a finding of the issue against the real API, PostgreSQL,
// Redis and BullMQ and checks that it now fails safe: rate limits before authentication and the key cache,
// slow requests cut with 408 and no temp file left, Node/Fastify-level refusals as problem+json, SSE from
// Redis with a per-tenant cap, the pre-queue estimate (422) and the tenant quotas (429), fair dispatch.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { redactUrl } from '../src/api/http-limits.js';
import { estimateJob, ZIP_DECODE_CACHE_BYTES } from '../src/api/job-limits.js';
import { JobStates } from '../src/jobs/state.js';
import { COMPRESSION_QUEUE } from '../src/queue/index.js';
import { assertProblem, startTestApp, storedFiles, type TestApp } from './helpers/app.js';
import { waitUntil } from './fault-support/wait.js';
import { buildZip, npyBytes } from './fixtures/hostile/zip-writer.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'hostile');
/** Takes [batch, 1, 8, 8]. */
const TINYNET = readFileSync(path.join(FIXTURES, 'good_tinynet.onnx'));

/** An .npz of `count` float32 images of 1 x 8 x 8, what tinynet takes. */
const imagesNpz = (count: number): Buffer =>
  buildZip([{ name: 'x.npy', data: npyBytes(`{'descr': '<f4', 'fortran_order': False, 'shape': (${count}, 1, 8, 8), }`, Buffer.alloc(count * 64 * 4)) }]);

async function uploadImages(t: TestApp, auth: { authorization: string }, count = 100): Promise<string> {
  const res = await t.http().post('/v1/datasets').set(auth).attach('file', imagesNpz(count), 'images.npz');
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body.id as string;
}

const randomKey = () => `tk_${randomBytes(6).toString('hex')}_${randomBytes(24).toString('base64url')}`;

async function listen(t: TestApp): Promise<number> {
  await t.app.listen({ port: 0, host: '127.0.0.1' });
  const address = t.app.server.address();
  assert.ok(address && typeof address === 'object');
  return address.port;
}

/** Sends `head` on a raw connection, then whatever `afterHead` writes; resolves with all the server sent. */
function rawExchange(port: number, head: string, afterHead: (socket: net.Socket) => void = () => undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('error', reject);
    socket.on('close', () => resolve(received));
    socket.on('connect', () => {
      socket.write(head);
      afterHead(socket);
    });
  });
}

/** The status line and problem document of a raw HTTP response. */
function parseRaw(text: string): { status: number; headers: string; body: Record<string, unknown> } {
  const split = text.indexOf('\r\n\r\n');
  const headers = text.slice(0, split);
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(headers)?.[1]);
  return { status, headers, body: JSON.parse(text.slice(split + 4)) as Record<string, unknown> };
}

async function uploadTinynet(t: TestApp, auth: { authorization: string }): Promise<string> {
  const res = await t.http().post('/v1/models').set(auth).attach('file', TINYNET, 'tinynet.onnx');
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body.id as string;
}

describe('authentication: per-address limit before it, a cache of verified keys', () => {
  let t: TestApp;
  let cached: TestApp;
  before(async () => {
    t = await startTestApp({ RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE: '5' });
    cached = await startTestApp({ AUTH_CACHE_TTL_MS: '1500' });
  });
  after(async () => {
    await t?.close();
    await cached?.close();
  });

  test('random keys are refused 429 past the per-address budget; a verified key still gets through', async () => {
    // Verified once (one database read), the key is then recognised without one.
    assert.equal((await t.http().get('/v1/jobs').set(t.authA)).status, 200);
    for (let i = 0; i < 4; i += 1) {
      assertProblem(await t.http().get('/v1/jobs').set({ authorization: `Bearer ${randomKey()}` }), 401, /invalid API key/);
    }
    const refused = await t.http().get('/v1/jobs').set({ authorization: `Bearer ${randomKey()}` });
    assertProblem(refused, 429, /rate limit of 5 requests per minute exceeded for this client address/);
    assert.ok(Number(refused.headers['retry-after']) > 0);
    assertProblem(await t.http().get('/v1/models'), 429, /client address/);
    assert.equal((await t.http().get('/v1/jobs').set(t.authA)).status, 200, 'the verified key is not throttled with the address');
    assert.equal((await t.http().get('/healthz')).status, 200, 'health checks are not limited');
  });

  test('a verified key is trusted for AUTH_CACHE_TTL_MS without a database read, so a revocation takes effect within it', async () => {
    const { createTestKey } = await import('./helpers/env.js');
    const key = await createTestKey(cached.env.prisma, 'acme');
    const auth = { authorization: `Bearer ${key}` };
    assert.equal((await cached.http().get('/v1/jobs').set(auth)).status, 200);
    await cached.env.prisma.apiKey.update({ where: { prefix: key.split('_')[1] }, data: { revokedAt: new Date() } });
    // No database read: the revocation is not seen yet.
    assert.equal((await cached.http().get('/v1/jobs').set(auth)).status, 200);
    await waitUntil('the cached key to expire', async () => (await cached.http().get('/v1/jobs').set(auth)).status === 401, { timeoutMs: 10_000 });
  });
});

describe('slow and malformed requests', () => {
  let t: TestApp;
  let port: number;
  before(async () => {
    t = await startTestApp({ UPLOAD_IDLE_TIMEOUT_MS: '400', HTTP_HEADERS_TIMEOUT_MS: '1000', HTTP_REQUEST_TIMEOUT_MS: '3000' });
    port = await listen(t);
  });
  after(async () => t?.close());

  const multipartHead = (auth: string, length: number) =>
    `POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: ${auth}\r\nContent-Type: multipart/form-data; boundary=B\r\n` +
    `Content-Length: ${length}\r\n\r\n--B\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n` +
    'Content-Type: application/octet-stream\r\n\r\n';

  test('an upload that stalls is cut with 408 problem+json and leaves no temp file', async () => {
    const response = await rawExchange(port, multipartHead(t.authA.authorization, 100_000), (socket) => socket.write(Buffer.alloc(2000, 7)));
    const { status, headers, body } = parseRaw(response);
    assert.equal(status, 408, response);
    assert.match(headers, /content-type: application\/problem\+json/i);
    assert.match(String(body.detail), /sent no data for 0\.4 s and was cut/);
    await waitUntil('the temp file to be removed', async () => (await storedFiles(t.env.config.storageDir)).length === 0, { timeoutMs: 5000 });
  });

  test('an upload that trickles past HTTP_REQUEST_TIMEOUT_MS is cut with 408 and leaves no temp file', async () => {
    let timer: NodeJS.Timeout | undefined;
    const response = await rawExchange(port, multipartHead(t.authA.authorization, 100_000), (socket) => {
      // A byte every 100 ms: never idle for the upload timeout, never done.
      timer = setInterval(() => socket.writable && socket.write('x'), 100);
    });
    clearInterval(timer);
    const { status, body } = parseRaw(response);
    assert.equal(status, 408, response);
    assert.equal(body.type, 'https://tuckerize.dev/problems/request-timeout');
    await waitUntil('the temp file to be removed', async () => (await storedFiles(t.env.config.storageDir)).length === 0, { timeoutMs: 5000 });
  });

  test('headers that never finish are cut with 408 problem+json', async () => {
    const response = await rawExchange(port, 'GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    const { status, body } = parseRaw(response);
    assert.equal(status, 408, response);
    assert.match(String(body.detail), /did not arrive in time/);
  });

  test('431 for oversized headers, 414 for an overlong path segment, 400 for broken HTTP: all problem+json', async () => {
    const big = parseRaw(await rawExchange(port, `GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`));
    assert.equal(big.status, 431);
    assert.match(String(big.body.detail), /exceed 16 KiB/);
    const broken = parseRaw(await rawExchange(port, 'GET /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n'));
    assert.equal(broken.status, 400);
    assert.equal(broken.body.type, 'https://tuckerize.dev/problems/bad-request');
    assertProblem(await t.http().get(`/v1/jobs/${'a'.repeat(200)}`).set(t.authA), 414, /path segment of the URL is too long/);
  });

});

describe('what is logged and echoed', () => {
  let t: TestApp;
  const lines: string[] = [];
  before(async () => {
    t = await startTestApp({ LOG_LEVEL: 'info' }, { logStream: { write: (line: string) => void lines.push(line) } });
  });
  after(async () => t?.close());

  /** The API's log records written while `fn` runs. */
  const logged = async (fn: () => Promise<void>): Promise<Array<Record<string, unknown>>> => {
    const from = lines.length;
    await fn();
    return lines.slice(from).map((line) => JSON.parse(line) as Record<string, unknown>);
  };

  test('malformed multipart is a 400 problem+json, logged without an error-level stack trace', async () => {
    const logs = await logged(async () => {
      const noBoundary = await t.http().post('/v1/models').set(t.authA).set('content-type', 'multipart/form-data').send('garbage');
      assertProblem(noBoundary, 400, /multipart body is malformed \(Multipart: Boundary not found\)/);
      const unterminated = await t.http().post('/v1/models').set(t.authA).set('content-type', 'multipart/form-data; boundary=XX')
        .send('--XX\r\ncontent-disposition: form-data; name="file"; filename="a.onnx"\r\n\r\nabc');
      assertProblem(unterminated, 400, /multipart body is malformed/);
    });
    assert.deepEqual(logs.filter((l) => Number(l.level) >= 50), [], 'nothing at error level');
  });

  test('?api_key= is neither echoed in a problem instance nor logged', async () => {
    const secret = 'tk_0123456789ab_SECRETSECRETSECRETSECRETSECRETSE';
    const logs = await logged(async () => {
      const missing = await t.http().get(`/v1/nope?api_key=${secret}`).set(t.authA);
      assert.equal(missing.status, 404);
      assert.equal(missing.body.instance, '/v1/nope');
      const invalid = await t.http().get(`/v1/jobs/not-a-uuid?api_key=${secret}`).set(t.authA);
      assert.equal(invalid.status, 400);
      assert.equal(invalid.body.instance, '/v1/jobs/not-a-uuid');
    });
    assert.ok(logs.length > 0, 'the requests were logged');
    assert.ok(!JSON.stringify(logs).includes('SECRET'), JSON.stringify(logs));
    assert.ok(JSON.stringify(logs).includes('api_key=[redacted]'));
  });
});

describe('job events: pushed from Redis, no polling, a per-tenant cap', () => {
  let t: TestApp;
  let port: number;
  let modelA: string;
  let publisher: Redis;
  let states: JobStates;
  before(async () => {
    t = await startTestApp({ SSE_MAX_STREAMS_PER_TENANT: '2', TENANT_MAX_RUNNING_JOBS: '100' });
    port = await listen(t);
    modelA = await uploadTinynet(t, t.authA);
    publisher = new Redis(t.env.config.redisUrl);
    states = new JobStates({ prisma: t.env.prisma, publisher, prefix: t.env.config.queuePrefix });
  });
  after(async () => {
    publisher?.disconnect();
    await t?.close();
  });

  const createJob = async (auth = t.authA, modelId = modelA): Promise<string> => {
    const res = await t.http().post('/v1/jobs').set(auth).send({ modelId });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    return res.body.id as string;
  };
  const open = (id: string, auth = t.authA) => fetch(`http://127.0.0.1:${port}/v1/jobs/${id}/events`, { headers: auth });

  test('a third stream of one tenant is refused 429 with Retry-After; other tenants are unaffected; a closed stream frees its slot', async () => {
    const id = await createJob();
    const first = new AbortController();
    const streams = [await fetch(`http://127.0.0.1:${port}/v1/jobs/${id}/events`, { headers: t.authA, signal: first.signal }), await open(id)];
    for (const s of streams) assert.equal(s.status, 200);
    const third = await open(id);
    assert.equal(third.status, 429);
    assert.match(third.headers.get('content-type') ?? '', /^application\/problem\+json/);
    assert.ok(Number(third.headers.get('retry-after')) > 0);
    assert.match(((await third.json()) as { detail: string }).detail, /already holds 2 open event streams/);

    const modelB = await uploadTinynet(t, t.authB);
    const other = await open(await createJob(t.authB, modelB), t.authB);
    assert.equal(other.status, 200, "another tenant's streams are counted apart");
    void other.body?.cancel();

    first.abort();
    await waitUntil('the closed stream to free its slot', async () => {
      const again = await open(id);
      if (again.status === 200) void again.body?.cancel();
      return again.status === 200;
    }, { timeoutMs: 5000 });
    for (const s of streams.slice(1)) void s.body?.cancel();
  });

  test('a stream reads the job once and then only what the job-events channel carries', async () => {
    const id = await createJob();
    const response = await open(id);
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    const nextEvent = async (): Promise<{ event: string; data: Record<string, unknown> }> => {
      for (;;) {
        const end = buffer.indexOf('\n\n');
        if (end >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (block.startsWith(':')) continue;
          const event = /^event: (.*)$/m.exec(block)?.[1] ?? '';
          return { event, data: JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? 'null') };
        }
        const { value, done } = await reader.read();
        if (done) throw new Error('stream ended');
        buffer += value;
      }
    };
    assert.equal((await nextEvent()).data.status, 'queued');
    // A change written to the row without a job-events message: a polling stream would report it within a second.
    await t.env.prisma.job.update({ where: { id }, data: { stage: 'polled' } });
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.ok(await states.claim(id, { workerId: 'test', attempt: 1 }));
    const next = await nextEvent();
    assert.equal(next.event, 'status');
    assert.equal(next.data.status, 'running', 'the first event after the snapshot is the published transition');
    assert.ok(await states.progress(id, { stage: 'plan', done: 1, total: 2, percent: 40 }));
    const progress = await nextEvent();
    assert.equal(progress.event, 'progress');
    assert.deepEqual({ ...progress.data, rate: undefined, etaSeconds: undefined }, { stage: 'plan', done: 1, total: 2, percent: 40, rate: undefined, etaSeconds: undefined });
    await states.fail(id, { category: 'bad_input', message: 'test' });
    assert.equal((await nextEvent()).data.status, 'failed');
    await assert.rejects(nextEvent(), /stream ended/);
  });
});

describe('the estimate before queueing, the tenant quotas, fair dispatch', () => {
  let t: TestApp;
  let modelA: string;
  let modelB: string;
  let queue: Queue;
  let datasetA: string;
  before(async () => {
    t = await startTestApp({ TENANT_MAX_ACTIVE_JOBS: '3', TENANT_MAX_RUNNING_JOBS: '1', JOB_MAX_COMPUTE_SECONDS: '600' });
    modelA = await uploadTinynet(t, t.authA);
    datasetA = await uploadImages(t, t.authA);
    modelB = await uploadTinynet(t, t.authB);
    queue = new Queue(COMPRESSION_QUEUE, { connection: { url: t.env.config.redisUrl }, prefix: t.env.config.queuePrefix });
  });
  after(async () => {
    await queue?.close();
    await t?.close();
  });

  const create = (auth: { authorization: string }, body: Record<string, unknown>) => t.http().post('/v1/jobs').set(auth).send(body);

  test('422 naming the limit and the estimate: a huge input sample, activations past the memory limit, steps past the compute limit', async () => {
    // Issue 12 item 1: a 2.6 KB upload with inputShape [1,3,8192,8192] (here a 1-channel model).
    assertProblem(await create(t.authA, { modelId: modelA, options: { inputShape: [1, 1, 8192, 8192] } }),
      422, /one input sample of shape \[1,8192,8192\] has 67,108,864 elements; the limit is 16,777,216/);
    // The largest sample allowed, even without training: the engine's evaluation and verification runs.
    assertProblem(await create(t.authA, { modelId: modelA, options: { inputShape: [1, 1, 4096, 4096] } }),
      422, /needs an estimated [\d,]+ MB of memory .* at batch 1\); the per-job limit is 8,192 MB \(JOB_MAX_MEMORY_MB\)/);
    assertProblem(await create(t.authA, { modelId: modelA, datasetId: datasetA, options: { inputShape: [1, 1, 1024, 1024], finetune: { steps: 1, batchSize: 512 } } }),
      422, /needs an estimated [\d,]+ MB of memory .* at batch 90\)/);
    // Issue 12 item 2: finetune.steps 10,000,000 (batch 64 of the 90 training images).
    assertProblem(await create(t.authA, { modelId: modelA, datasetId: datasetA, options: { finetune: { steps: 10_000_000 } } }),
      422, /needs an estimated [\d,]+ s of compute \(10,000,000 steps x batch 64 .*the per-job limit is 600 s \(JOB_MAX_COMPUTE_SECONDS\)/);
    assert.equal(await t.env.prisma.job.count(), 0, 'nothing was created');
  });

  test('past TENANT_MAX_ACTIVE_JOBS: 429 with Retry-After; the other tenant is unaffected; held jobs move up as jobs end', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i += 1) {
      const res = await create(t.authA, { modelId: modelA });
      assert.equal(res.status, 202, JSON.stringify(res.body));
      ids.push(res.body.id as string);
    }
    const refused = await create(t.authA, { modelId: modelA });
    assertProblem(refused, 429, /has 3 queued or running jobs, the quota \(TENANT_MAX_ACTIVE_JOBS 3\)/);
    assert.ok(Number(refused.headers['retry-after']) > 0);

    // TENANT_MAX_RUNNING_JOBS=1: one of A's jobs is runnable, the other two wait as delayed BullMQ jobs.
    const states = async () => Promise.all(ids.map(async (id) => (await queue.getJob(id))?.getState()));
    assert.deepEqual(await states(), ['waiting', 'delayed', 'delayed']);
    const b = await create(t.authB, { modelId: modelB });
    assert.equal(b.status, 202);
    assert.equal(await (await queue.getJob(b.body.id as string))?.getState(), 'waiting', "B's job is not behind A's backlog");

    // A's runnable job ends: its oldest held job becomes runnable (via the job-events channel).
    assert.equal((await t.http().post(`/v1/jobs/${ids[0]}/cancel`).set(t.authA)).status, 200);
    await waitUntil("A's next job to be promoted", async () => (await states())[1] === 'waiting', { timeoutMs: 10_000 });
    assert.equal((await states())[2], 'delayed');
    // Cancelling a held job frees nothing: the third stays held while the second is runnable.
    assert.equal((await t.http().post(`/v1/jobs/${ids[2]}/cancel`).set(t.authA)).status, 200);
    assert.equal((await create(t.authA, { modelId: modelA })).status, 202, 'room again under the active-job quota');
  });

  test('past the hourly compute quota: 429 with Retry-After counting down to when the hour makes room', async () => {
    const model = await t.env.prisma.onnxModel.findUniqueOrThrow({ where: { id: modelA } });
    const dataset = await t.env.prisma.dataset.findUniqueOrThrow({ where: { id: datasetA } });
    const options = { finetune: { steps: 100_000 } };
    const estimate = estimateJob({ model, dataset, options }, t.env.config.engineMacsPerSecond);
    assert.ok(estimate.computeSeconds >= 10, JSON.stringify(estimate));
    // Room for two such jobs in an hour, not three.
    const perHour = estimate.computeSeconds * 2 + Math.floor(estimate.computeSeconds / 2);
    const quota = await startTestApp({ TENANT_MAX_COMPUTE_SECONDS_PER_HOUR: String(perHour), TENANT_MAX_RUNNING_JOBS: '5' });
    try {
      const body = { modelId: await uploadTinynet(quota, quota.authA), datasetId: await uploadImages(quota, quota.authA), options };
      for (let i = 0; i < 2; i += 1) assert.equal((await quota.http().post('/v1/jobs').set(quota.authA).send(body)).status, 202);
      const refused = await quota.http().post('/v1/jobs').set(quota.authA).send(body);
      assertProblem(refused, 429, /TENANT_MAX_COMPUTE_SECONDS_PER_HOUR/);
      const retryAfter = Number(refused.headers['retry-after']);
      assert.ok(retryAfter > 3500 && retryAfter <= 3600, `Retry-After ${retryAfter}: the first job leaves the window in about an hour`);
      assert.equal((await quota.http().post('/v1/jobs').set(quota.authB).send({ modelId: await uploadTinynet(quota, quota.authB) })).status, 202);
    } finally {
      await quota.close();
    }
  });
});

describe('pure parts', () => {
  test('redactUrl hides credential-like query values and keeps the rest', () => {
    assert.equal(redactUrl('/v1/jobs?api_key=tk_x&limit=5&token=abc&Access-Token=z'), '/v1/jobs?api_key=[redacted]&limit=5&token=[redacted]&Access-Token=[redacted]');
    assert.equal(redactUrl('/v1/jobs'), '/v1/jobs');
  });

  test('a .zip dataset counts at most its decode cache; an .npz its float32 copies', () => {
    const model = { inputs: [{ dims: ['N', 3, 224, 224] }], params: 1_000_000, macs: 300_000_000, bytes: 4_000_000 };
    const options = { finetune: { steps: 10 } };
    const zip = estimateJob({ model, dataset: { format: 'zip', info: { total: 1_000_000 } }, options }, 1e9);
    assert.equal(zip.datasetBytes, ZIP_DECODE_CACHE_BYTES);
    const npz = estimateJob({ model, dataset: { format: 'npz', info: { count: 1000, shape: [1000, 3, 224, 224] } }, options }, 1e9);
    assert.equal(npz.datasetBytes, 2 * 1000 * 3 * 224 * 224 * 4);
    assert.deepEqual([npz.steps, npz.batchSize, npz.macsPerSample], [10, 64, 300_000_000]);
    // The model was analysed at 224 x 224; at 448 x 448 its convolutions cost four times as much.
    const larger = estimateJob({ model, dataset: null, options: { inputShape: [1, 3, 448, 448] } }, 1e9);
    assert.equal(larger.macsPerSample, 1_200_000_000);
  });

  test("accuracy-target mode counts its candidates' brief fine-tunes and held-out checks", () => {
    const model = { inputs: [{ dims: ['N', 1, 28, 28] }], params: 1_000_000, macs: 50_000_000, bytes: 4_000_000 };
    const options = { finetune: { epochs: 1 } };
    const plain = estimateJob({ model, dataset: 'builtin', options }, 1e9);
    const search = estimateJob({ model, dataset: 'builtin', options: { ...options, maxAccuracyDrop: 0.5 } }, 1e9);
    // Five candidates of 200 steps at batch 64 (4 passes per sample), each scored three times on 2,000 images.
    const extra = 5 * (4 * 200 * 64 + 3 * 2000) * 50_000_000;
    assert.equal(search.computeSeconds - plain.computeSeconds, Math.ceil(extra / 1e9));
    // A training part smaller than 200 batches: each candidate gets at most one epoch.
    const small = { format: 'npz', info: { count: 1000, shape: [1000, 1, 28, 28] } };
    const few = estimateJob({ model, dataset: small, options: { ...options, maxAccuracyDrop: 0.5 } }, 1e9);
    const fewPlain = estimateJob({ model, dataset: small, options }, 1e9);
    const perEpoch = Math.floor(900 / 64);
    assert.equal(few.computeSeconds - fewPlain.computeSeconds, Math.ceil((5 * (4 * perEpoch * 64 + 3 * 100) * 50_000_000) / 1e9));
  });
});
