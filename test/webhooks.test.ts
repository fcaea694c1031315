// Signed webhooks: the SSRF guard, the /v1/webhooks API (tenant-isolated), and a real delivery of a job
// event to a local receiver that checks every signature with an independent implementation (the
// `standardwebhooks` package), answers the first attempt with a 500 and so proves the signed retry.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { Webhook as StandardWebhook } from 'standardwebhooks';
import { createWebhookQueue, postSigned, startDeliveryWorker, type DeliveryWorker } from '../src/webhooks/deliveries.js';
import { forbiddenRange } from '../src/webhooks/destination.js';
import { signWebhook } from '../src/webhooks/signing.js';
import { assertProblem, startTestApp, type TestApp } from './helpers/app.js';
import { createFixtures, type Fixtures } from './helpers/fixtures.js';

interface Received {
  path: string;
  headers: Record<string, string>;
  body: string;
}

async function startReceiver(answer: (r: Received, nth: number) => number): Promise<{ url: string; received: Received[]; close(): Promise<void> }> {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r = { path: req.url ?? '', headers: req.headers as Record<string, string>, body: Buffer.concat(chunks).toString('utf8') };
      received.push(r);
      res.statusCode = answer(r, received.filter((x) => x.path === r.path).length);
      res.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, received, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('SSRF guard', () => {
  test('loopback, private, link-local (metadata), CGNAT and mapped addresses are refused; public ones pass', () => {
    for (const address of ['127.0.0.1', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '::1', 'fd00:ec2::254', 'fe80::1', '::ffff:127.0.0.1', '224.0.0.1']) {
      assert.notEqual(forbiddenRange(address), null, address);
    }
    for (const address of ['8.8.8.8', '1.1.1.1', '2606:4700:4700::1111', '::ffff:8.8.8.8']) assert.equal(forbiddenRange(address), null, address);
  });

  test('a delivery to an internal address is refused at connect time, by literal or by name', async () => {
    const strict = { allowPrivate: false, timeoutMs: 2000, attempts: 1, backoffMs: 1 };
    for (const url of ['http://127.0.0.1:9/x', 'http://[::1]:9/x', 'http://localhost:9/x']) {
      const result = await postSigned(url, {}, '{}', strict);
      assert.equal(result.statusCode, null, url);
      assert.match(String(result.error), /public addresses only/, url);
    }
  });

  test('signatures follow Standard Webhooks (checked by the standardwebhooks package)', () => {
    const secret = `whsec_${Buffer.from('0123456789abcdef0123456789abcdef').toString('base64')}`;
    const now = Math.floor(Date.now() / 1000);
    const headers = signWebhook(secret, 'msg_1', now, '{"a":1}');
    assert.deepEqual(new StandardWebhook(secret).verify('{"a":1}', { ...headers }), { a: 1 });
    assert.throws(() => new StandardWebhook(secret).verify('{"a":2}', { ...headers }), /signature/i);
  });
});

describe('/v1/webhooks', () => {
  let strict: TestApp;
  before(async () => {
    strict = await startTestApp();
  });
  after(async () => strict?.close());

  test('URLs that resolve to internal addresses are refused with 422; bad bodies with 400', async () => {
    for (const url of ['http://127.0.0.1:8080/hook', 'http://169.254.169.254/latest/meta-data', 'http://[::1]/x', 'http://localhost/x', 'http://10.0.0.5/x']) {
      const res = await strict.http().post('/v1/webhooks').set(strict.authA).send({ url, events: ['job.succeeded'] });
      assertProblem(res, 422, /public addresses only/);
    }
    const dns = await strict.http().post('/v1/webhooks').set(strict.authA).send({ url: 'http://no-such-host.invalid/x', events: ['job.failed'] });
    assertProblem(dns, 422, /does not resolve/);
    assertProblem(await strict.http().post('/v1/webhooks').set(strict.authA).send({ url: 'ftp://example.com/x', events: ['job.failed'] }), 400, /http\(s\) URL/);
    assertProblem(await strict.http().post('/v1/webhooks').set(strict.authA).send({ url: 'https://example.com/x', events: [] }), 400, /at least one/);
    assertProblem(await strict.http().post('/v1/webhooks').set(strict.authA).send({ url: 'https://example.com/x', events: ['job.started'] }), 400, /events/);
  });
});

describe('webhook delivery', () => {
  let t: TestApp;
  let fx: Fixtures;
  let deliveries: DeliveryWorker;
  let connection: Redis;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let modelId: string;

  before(async () => {
    fx = await createFixtures();
    t = await startTestApp({ WEBHOOK_ALLOW_PRIVATE: 'true', WEBHOOK_BACKOFF_MS: '200', WEBHOOK_ATTEMPTS: '3', WEBHOOK_TIMEOUT_MS: '2000' });
    connection = new Redis(t.env.config.redisUrl, { maxRetriesPerRequest: null });
    const { config } = t.env;
    const queue = createWebhookQueue(connection, config.queuePrefix, config.webhooks);
    deliveries = startDeliveryWorker({ prisma: t.env.prisma, connection, prefix: config.queuePrefix, config: config.webhooks, logger: pino({ level: 'silent' }), queue });
    receiver = await startReceiver((r, nth) => (r.path === '/flaky' && nth === 1 ? 500 : r.path === '/down' ? 503 : 204));
    modelId = (await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny)).body.id;
    assert.ok(modelId);
  });
  after(async () => {
    await deliveries?.close();
    await receiver?.close();
    await t?.close();
    connection?.disconnect();
    await fx?.cleanup();
  });

  test('create, list, get and delete are per tenant; the secret is shown once', async () => {
    const created = await t.http().post('/v1/webhooks').set(t.authA).send({ url: `${receiver.url}/unused`, events: ['job.failed'] });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.match(created.body.secret, /^whsec_[A-Za-z0-9+/]+=*$/);
    assert.ok(Buffer.from(created.body.secret.slice(6), 'base64').length >= 24);
    assert.deepEqual(created.body.events, ['job.failed']);
    const id = created.body.id as string;
    const got = await t.http().get(`/v1/webhooks/${id}`).set(t.authA);
    assert.equal(got.status, 200);
    assert.equal(got.body.secret, undefined, 'the secret is not shown again');
    const listA = await t.http().get('/v1/webhooks').set(t.authA);
    assert.deepEqual(listA.body.items.map((w: { id: string }) => w.id), [id]);
    assert.deepEqual((await t.http().get('/v1/webhooks').set(t.authB)).body.items, []);
    assertProblem(await t.http().get(`/v1/webhooks/${id}`).set(t.authB), 404, /does not exist/);
    assertProblem(await t.http().get(`/v1/webhooks/${id}/deliveries`).set(t.authB), 404, /does not exist/);
    assertProblem(await t.http().delete(`/v1/webhooks/${id}`).set(t.authB), 404, /does not exist/);
    assert.equal((await t.http().delete(`/v1/webhooks/${id}`).set(t.authA)).status, 204);
    assertProblem(await t.http().get(`/v1/webhooks/${id}`).set(t.authA), 404, /does not exist/);
  });

  test('a delivery whose queue entry was lost (Redis down when the job ended) is sent by the sweeper', async () => {
    const hook = (await t.http().post('/v1/webhooks').set(t.authA).send({ url: `${receiver.url}/swept`, events: ['job.failed'] })).body;
    const id = randomUUID();
    const body = JSON.stringify({ type: 'job.failed', timestamp: new Date().toISOString(), data: { job: { id: 'x' } } });
    await t.env.prisma.webhookDelivery.create({
      data: { id, webhookId: hook.id, jobId: randomUUID(), event: 'job.failed', body, createdAt: new Date(Date.now() - 120_000) },
    });
    assert.equal(await deliveries.sweep(), 1);
    await waitFor('the swept delivery', async () => {
      const row = await t.env.prisma.webhookDelivery.findUnique({ where: { id } });
      return row?.status === 'succeeded' ? row : undefined;
    });
    const got = receiver.received.filter((r) => r.path === '/swept');
    assert.equal(got.length, 1);
    assert.equal(got[0]!.headers['webhook-id'], id);
    assert.ok(new StandardWebhook(hook.secret).verify(got[0]!.body, got[0]!.headers));
    assert.equal(await deliveries.sweep(), 0, 'nothing left to sweep');
  });

  test('a canceled job is delivered signed; a 500 is retried with the same webhook-id; other tenants hear nothing', async () => {
    const flaky = (await t.http().post('/v1/webhooks').set(t.authA).send({ url: `${receiver.url}/flaky`, events: ['job.canceled', 'job.succeeded'] })).body;
    const down = (await t.http().post('/v1/webhooks').set(t.authA).send({ url: `${receiver.url}/down`, events: ['job.canceled'] })).body;
    const otherTenant = (await t.http().post('/v1/webhooks').set(t.authB).send({ url: `${receiver.url}/tenant-b`, events: ['job.canceled'] })).body;
    const notSubscribed = (await t.http().post('/v1/webhooks').set(t.authA).send({ url: `${receiver.url}/failed-only`, events: ['job.failed'] })).body;
    for (const w of [flaky, down, otherTenant, notSubscribed]) assert.ok(w.id, JSON.stringify(w));

    const job = await t.http().post('/v1/jobs').set(t.authA).send({ modelId, options: { rule: 'ratio', ratio: 0.5 } });
    assert.equal(job.status, 202, JSON.stringify(job.body));
    assert.equal((await t.http().post(`/v1/jobs/${job.body.id}/cancel`).set(t.authA)).status, 200);

    const flakyDelivery = await waitFor('the retried delivery', async () => {
      const page = (await t.http().get(`/v1/webhooks/${flaky.id}/deliveries`).set(t.authA)).body;
      return page.items[0]?.status === 'succeeded' ? page.items[0] : undefined;
    });
    const atFlaky = receiver.received.filter((r) => r.path === '/flaky');
    assert.equal(atFlaky.length, 2, 'one failed attempt, one retry');
    const verifier = new StandardWebhook(flaky.secret);
    for (const r of atFlaky) {
      const payload = verifier.verify(r.body, r.headers) as { type: string; timestamp: string; data: { job: { id: string; status: string } } };
      assert.equal(payload.type, 'job.canceled');
      assert.equal(payload.data.job.id, job.body.id);
      assert.equal(payload.data.job.status, 'canceled');
      assert.ok(!Number.isNaN(Date.parse(payload.timestamp)));
    }
    assert.equal(atFlaky[0]!.headers['webhook-id'], atFlaky[1]!.headers['webhook-id'], 'webhook-id is stable across retries');
    assert.equal(atFlaky[0]!.body, atFlaky[1]!.body, 'the body is the same on every attempt');
    assert.equal(atFlaky[0]!.headers['webhook-id'], flakyDelivery.id);
    assert.throws(() => new StandardWebhook(down.secret).verify(atFlaky[0]!.body, atFlaky[0]!.headers), 'another endpoint has another secret');
    assert.equal(flakyDelivery.attempts, 2);
    assert.deepEqual(flakyDelivery.attemptLog.map((a: { statusCode: number }) => a.statusCode), [500, 204]);
    assert.match(flakyDelivery.attemptLog[0].error, /HTTP 500/);

    const downDelivery = await waitFor('the delivery that never succeeds', async () => {
      const page = (await t.http().get(`/v1/webhooks/${down.id}/deliveries`).set(t.authA)).body;
      return page.items[0]?.status === 'failed' ? page.items[0] : undefined;
    });
    assert.equal(downDelivery.attempts, 3, 'WEBHOOK_ATTEMPTS attempts, each recorded');
    assert.deepEqual(downDelivery.attemptLog.map((a: { statusCode: number }) => a.statusCode), [503, 503, 503]);
    assert.equal(downDelivery.nextAttemptAt, null);

    assert.equal(receiver.received.filter((r) => r.path === '/tenant-b' || r.path === '/failed-only').length, 0);
    assert.deepEqual((await t.http().get(`/v1/webhooks/${otherTenant.id}/deliveries`).set(t.authB)).body.items, []);
  });
});
