// Auth, rate limits, health/readiness with dependencies up and down, docs, metrics, errors, headers.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { buildApp } from '../src/api/app.js';
import { authenticate, generateApiKey } from '../src/api/auth.js';
import { assertProblem, startTestApp, type TestApp } from './helpers/app.js';

let t: TestApp;
before(async () => {
  t = await startTestApp();
});
after(async () => t?.close());

describe('authentication', () => {
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['no Authorization header', {}, /missing Authorization header/],
    ['a Basic scheme', { authorization: 'Basic dXNlcjpwYXNz' }, /must be "Bearer <api key>"/],
    ['a malformed key', { authorization: 'Bearer hunter2' }, /malformed API key/],
    ['an unknown key', { authorization: `Bearer ${generateApiKey().key}` }, /invalid API key/],
  ];
  for (const [what, headers, detail] of cases) {
    test(`401 for ${what}`, async () => {
      assertProblem(await t.http().get('/v1/jobs').set(headers), 401, detail);
    });
  }

  test('a known prefix with a wrong secret is refused', async () => {
    const prefix = t.keyA.split('_')[1];
    const forged = `tk_${prefix}_${'A'.repeat(32)}`;
    assertProblem(await t.http().get('/v1/jobs').set({ authorization: `Bearer ${forged}` }), 401, /invalid API key/);
  });

  test('a revoked key is refused, the tenant keeps its other keys', async () => {
    // AUTH_CACHE_TTL_MS=0: every request reads the key (test/tenant-isolation.test.ts covers the cache).
    const uncached = await startTestApp({ AUTH_CACHE_TTL_MS: '0' });
    try {
      const { createTestKey } = await import('./helpers/env.js');
      const extra = await createTestKey(uncached.env.prisma, 'acme');
      assert.equal((await uncached.http().get('/v1/jobs').set({ authorization: `Bearer ${extra}` })).status, 200);
      await uncached.env.prisma.apiKey.update({ where: { prefix: extra.split('_')[1] }, data: { revokedAt: new Date() } });
      assertProblem(await uncached.http().get('/v1/jobs').set({ authorization: `Bearer ${extra}` }), 401, /revoked/);
      assert.equal((await uncached.http().get('/v1/jobs').set(uncached.authA)).status, 200);
    } finally {
      await uncached.close();
    }
  });

  test('keys are stored only as sha256 hashes', async () => {
    const rows = await t.env.prisma.apiKey.findMany();
    for (const row of rows) {
      assert.match(row.hash, /^[0-9a-f]{64}$/);
      assert.notEqual(row.hash, t.keyA);
    }
    const principal = await authenticate(t.env.prisma, `Bearer ${t.keyA}`);
    const tenant = await t.env.prisma.tenant.findUniqueOrThrow({ where: { name: 'acme' } });
    assert.equal(principal.tenantId, tenant.id);
  });
});

describe('ops routes', () => {
  test('/healthz and /readyz answer without a key', async () => {
    assert.deepEqual((await t.http().get('/healthz')).body, { status: 'ok' });
    const ready = await t.http().get('/readyz');
    assert.equal(ready.status, 200);
    assert.equal(ready.body.status, 'ready');
    assert.equal(ready.body.checks.postgres.ok, true);
    assert.equal(ready.body.checks.redis.ok, true);
  });

  test('/readyz is a 503 naming Redis when Redis is down', async () => {
    const deadRedis = new Redis({ host: '127.0.0.1', port: 1, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
    deadRedis.on('error', () => undefined);
    const app = await buildApp(t.env.config, { prisma: t.env.prisma, redis: deadRedis, analyzeModels: false });
    try {
      const res = await app.inject({ method: 'GET', url: '/readyz' });
      assert.equal(res.statusCode, 503);
      assert.match(res.headers['content-type'] as string, /^application\/problem\+json/);
      const body = res.json() as { detail: string };
      assert.match(body.detail, /redis is down/);
      assert.doesNotMatch(body.detail, /postgres is down/);
      assert.doesNotMatch(body.detail, /127\.0\.0\.1|ECONNREFUSED|connect|:1\b/, 'no driver error text (host, port) for an unauthenticated caller');
    } finally {
      await app.close();
      deadRedis.disconnect();
    }
  });

  test('/readyz is a 503 naming PostgreSQL when it is unreachable, and /v1 routes fail fast with 503', async () => {
    const config = { ...t.env.config, databaseUrl: 'postgresql://postgres@127.0.0.1:1/nothing' };
    const app = await buildApp(config, { analyzeModels: false });
    try {
      const res = await app.inject({ method: 'GET', url: '/readyz' });
      assert.equal(res.statusCode, 503);
      assert.match((res.json() as { detail: string }).detail, /postgres is down/);
      assert.doesNotMatch((res.json() as { detail: string }).detail, /127\.0\.0\.1|ECONNREFUSED|connect|:1\b/);
      const api = await app.inject({ method: 'GET', url: '/v1/jobs', headers: t.authA });
      assert.equal(api.statusCode, 503);
      assert.match((api.json() as { detail: string }).detail, /database is unavailable/);
    } finally {
      await app.close();
    }
  });

  test('/openapi.yaml and the /docs UI are served', async () => {
    const spec = await t.http().get('/openapi.yaml');
    assert.equal(spec.status, 200);
    assert.match(spec.headers['content-type'] ?? '', /yaml/);
    assert.match(spec.text, /^openapi: 3\.1\.0/);
    assert.match(spec.text, /\/v1\/jobs\/\{id\}\/artifact:/);
    const docs = await t.http().get('/docs/').redirects(2);
    assert.equal(docs.status, 200);
    assert.match(docs.text, /swagger-ui/i);
  });

  test('/metrics serves Prometheus text', async () => {
    const res = await t.http().get('/metrics');
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type'] ?? '', /text\/plain/);
    assert.match(res.text, /^# HELP process_cpu_user_seconds_total/m);
  });

  test('unknown routes are problem+json 404s', async () => {
    assertProblem(await t.http().get('/v2/models'), 404, /no route GET \/v2\/models/);
  });

  test('responses carry a request id (the caller\'s when sane) and security headers', async () => {
    const res = await t.http().get('/healthz').set('x-request-id', 'trace-123');
    assert.equal(res.headers['x-request-id'], 'trace-123');
    const generated = await t.http().get('/healthz').set('x-request-id', 'bad id with spaces');
    assert.match(generated.headers['x-request-id'] ?? '', /^[0-9a-f-]{36}$/);
    assert.equal(res.headers['x-content-type-options'], 'nosniff');
    assert.ok(res.headers['content-security-policy']);
    assert.ok(res.headers['strict-transport-security']);
  });
});

describe('rate limits', () => {
  let limited: TestApp;
  before(async () => {
    limited = await startTestApp({ RATE_LIMIT_PER_MINUTE: '3' });
  });
  after(async () => limited?.close());

  test('each key has its own per-minute budget; past it, 429 problem+json with Retry-After', async () => {
    for (let i = 0; i < 3; i += 1) {
      const ok = await limited.http().get('/v1/jobs').set(limited.authA);
      assert.equal(ok.status, 200);
      assert.equal(ok.headers['x-ratelimit-limit'], '3');
    }
    const refused = await limited.http().get('/v1/jobs').set(limited.authA);
    assertProblem(refused, 429, /rate limit of 3 requests per minute/);
    assert.ok(Number(refused.headers['retry-after']) > 0);
    assert.equal((await limited.http().get('/v1/jobs').set(limited.authB)).status, 200, "another key's budget is untouched");
    assert.equal((await limited.http().get('/healthz')).status, 200, 'health checks are not limited');
  });
});

describe('operator views', () => {
  const adminKey = 'admin-key-for-tests-0123456789';
  let ops: TestApp;
  before(async () => {
    ops = await startTestApp({ ADMIN_KEY: adminKey });
  });
  after(async () => ops?.close());

  test('/admin/queues needs the admin key (Basic or x-admin-key) and then serves bull-board', async () => {
    const anonymous = await ops.http().get('/admin/queues');
    assertProblem(anonymous, 401, /admin key/);
    assert.match(anonymous.headers['www-authenticate'] ?? '', /^Basic/);
    assert.equal((await ops.http().get('/admin/queues').auth('ops', 'wrong-key')).status, 401);
    assert.equal((await ops.http().get('/admin/queues').set(ops.authA)).status, 401, 'a tenant key is not the admin key');
    const page = await ops.http().get('/admin/queues').auth('ops', adminKey);
    assert.equal(page.status, 200);
    assert.match(page.text, /<html/i);
    const queues = await ops.http().get('/admin/queues/api/queues').set('x-admin-key', adminKey);
    assert.equal(queues.status, 200);
    assert.ok((queues.body.queues as Array<{ name: string }>).some((q) => q.name === 'compression'));
  });

  test('without ADMIN_KEY there is no dashboard', async () => {
    assert.equal((await t.http().get('/admin/queues')).status, 404);
  });

  test('GET /v1/stats reports the caller tenant only; /metrics has the job and HTTP series', async () => {
    const tenantA = await ops.env.prisma.tenant.findUniqueOrThrow({ where: { name: 'acme' } });
    const stats = await ops.http().get('/v1/stats').set(ops.authA);
    assert.equal(stats.status, 200, JSON.stringify(stats.body));
    assert.equal(stats.body.tenantId, tenantA.id);
    assert.equal(stats.body.throughputPerHour.length, stats.body.windowHours);
    assertProblem(await ops.http().get('/v1/stats'), 401, /Authorization/);
    const metrics = await ops.http().get('/metrics');
    assert.match(metrics.text, /^jobs_created_total /m);
    assert.match(metrics.text, /^http_request_duration_seconds_count\{.*route="\/v1\/stats".*\} \d+/m);
  });
});
